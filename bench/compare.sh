#!/usr/bin/env bash
# Side-by-side benchmark on this machine, loopback only, in one run:
#   Ripple (embedded engine, durable: acknowledged after fsync),
#   Redis 7 with appendfsync always, and without persistence,
#   etcd 3.4 through its HTTP JSON gateway,
#   a bare HTTP handler on Ripple's own server loop (the HTTP floor).
# Same concurrency, value size and key space for all. Installs what is
# missing from Debian's packages, starts each store privately in a temp dir,
# and writes bench/RESULTS.md.
#
#   bench/compare.sh                      # 64 connections, 100-byte values, 100k keys, 10 s, 3 rounds
#   CONNS=32 DURATION=5 ROUNDS=1 bench/compare.sh
#
# Each round starts every store, runs the writes, then the reads, with the
# runs a target compares back to back; the table gives the median of the
# rounds (and each round's ops/s), and the ratios compare medians.
set -euo pipefail
cd "$(dirname "$0")/.."

CONNS=${CONNS:-64}
VALUE_SIZE=${VALUE_SIZE:-100}
KEYS=${KEYS:-100000}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-bench/RESULTS.md}

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
command -v etcd >/dev/null || need+=(etcd-server)
command -v wrk >/dev/null || need+=(wrk)
command -v python3 >/dev/null || need+=(python3)
if [ "${#need[@]}" -gt 0 ]; then
    echo "installing ${need[*]}" >&2
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

cargo build --release --bin ripple --example http_floor >&2
RIPPLE=target/release/ripple
FLOOR=target/release/examples/http_floor

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in ${pids[@]+"${pids[@]}"}; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "nothing listening on port $1" >&2
    return 1
}

results="$work/results"
: >"$results"
# record STORE WORKLOAD OPS_PER_SEC P50_MS P99_MS TOOL
record() { echo "$*" >>"$results"; echo "  $*" >&2; }

# ripple bench with --json, recorded.
ripple_bench() {
    local store=$1 workload=$2 url=$3
    shift 3
    "$RIPPLE" bench --url "$url" --workload "$workload" --connections "$CONNS" \
        --keys "$KEYS" --value-size "$VALUE_SIZE" --duration "${DURATION}s" --warmup 2s --json "$@" \
        2>/dev/null >"$work/out.json"
    python3 - "$store" "$workload" "$work/out.json" >>"$results" <<'EOF'
import json, sys
store, workload, path = sys.argv[1:4]
d = json.load(open(path))
l = d["latency_ms"]
print(store, workload, round(d["throughput_ops_per_sec"]), l["p50"], l["p99"], "ripple-bench")
EOF
    tail -n 1 "$results" >&2
}

# wrk with a script, recorded (throughput and p50/p99 from --latency).
wrk_run() {
    local store=$1 workload=$2 url=$3 script=${4:-}
    local args=(-t2 -c"$CONNS" -d"${DURATION}s" --latency)
    [ -n "$script" ] && args+=(-s "$script")
    wrk "${args[@]}" "$url" >"$work/wrk.txt"
    python3 - "$store" "$workload" "$work/wrk.txt" >>"$results" <<'EOF'
import re, sys
store, workload, path = sys.argv[1:4]
text = open(path).read()
def ms(v):
    n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return round(float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit], 3)
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", text).group(1))
p99 = ms(re.search(r"\s99%\s+(\S+)", text).group(1))
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
if bad:
    print(f"warning: {store} {workload}: {bad.group(1)} non-2xx answers", file=sys.stderr)
print(store, workload, round(rps), p50, p99, "wrk")
EOF
    tail -n 1 "$results" >&2
}

# redis-benchmark, one test (set or get), recorded.
redis_run() {
    local store=$1 port=$2 test=$3
    local n=$((CONNS * 3000))
    redis-benchmark -p "$port" -c "$CONNS" -d "$VALUE_SIZE" -r "$KEYS" -n "$n" -t "$test" --csv -q \
        >"$work/redis.csv"
    python3 - "$store" "$work/redis.csv" >>"$results" <<'EOF'
import csv, sys
store, path = sys.argv[1:3]
rows = list(csv.reader(open(path)))
head = rows[0]
for row in rows[1:]:
    r = dict(zip(head, row))
    workload = {"SET": "put", "GET": "get"}[r["test"]]
    print(store, workload, round(float(r["rps"])), r["p50_latency_ms"], r["p99_latency_ms"], "redis-benchmark")
EOF
    tail -n 1 "$results" >&2
}

# Starts a server in the background; its pid joins the round's.
start() {
    "$@" &
    pids+=($!)
}

# Stops every server of the round and waits until they have exited, so
# that no shutdown runs into the next round.
stop_all() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}

# A pause after a write run, so that what a store does in the background
# after it (Ripple folds its memtable into its B-tree) settles before the
# next store's run.
settle() {
    sleep "${SETTLE:-5}"
}

# Runs two measurements back to back, the first one first in odd rounds
# and second in even ones: the two figures a target compares are taken
# moments apart, and neither always goes first.
pair() {
    if [ $((round % 2)) -eq 1 ]; then
        eval "$1"
        eval "$2"
    else
        eval "$2"
        eval "$1"
    fi
}

# Each round starts every store at once (each idle until its turn, but
# for what its own runs leave to do in the background: see `settle`),
# runs every write workload, then every read workload; the figures a
# target compares run back to back (see `pair`). The table gives medians of the
# rounds: this machine's speed drifts over minutes.
for round in $(seq 1 "$ROUNDS"); do
    echo "== round $round: starting every store" >&2
    floor=$(free_port)
    start "$FLOOR" "127.0.0.1:$floor" >/dev/null
    ripple=$(free_port)
    start "$RIPPLE" serve --listen "127.0.0.1:$ripple" --data-dir "$work/ripple-$round" \
        >/dev/null 2>"$work/ripple.log"
    aof=$(free_port)
    mkdir -p "$work/aof-$round" "$work/plain-$round"
    start redis-server --port "$aof" --bind 127.0.0.1 --dir "$work/aof-$round" --save '' \
        --daemonize no --appendonly yes --appendfsync always >/dev/null
    plain=$(free_port)
    start redis-server --port "$plain" --bind 127.0.0.1 --dir "$work/plain-$round" --save '' \
        --daemonize no --appendonly no >/dev/null
    etcd=$(free_port)
    peer=$(free_port)
    start etcd --name bench --data-dir "$work/etcd-$round" \
        --listen-client-urls "http://127.0.0.1:$etcd" --advertise-client-urls "http://127.0.0.1:$etcd" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "bench=http://127.0.0.1:$peer" --log-level error >/dev/null 2>&1
    for port in "$floor" "$ripple" "$aof" "$plain" "$etcd"; do wait_port "$port"; done

    echo "== round $round: writes" >&2
    pair 'ripple_bench ripple put "http://127.0.0.1:$ripple"; settle' \
        'redis_run redis-aof-always "$aof" set; settle'
    redis_run redis-no-persistence "$plain" set
    settle
    OP=put KEYS=$KEYS VALUE_SIZE=$VALUE_SIZE wrk_run etcd put "http://127.0.0.1:$etcd" bench/wrk-etcd.lua
    # Every key present for the reads (not recorded), then a pause so that
    # no store still works off the writes when the reads start.
    "$RIPPLE" bench --url "http://127.0.0.1:$ripple" --workload get --preload --connections "$CONNS" \
        --keys "$KEYS" --value-size "$VALUE_SIZE" --duration 1s >/dev/null 2>&1
    settle

    echo "== round $round: reads" >&2
    pair 'KEYS=$KEYS wrk_run floor get "http://127.0.0.1:$floor" bench/wrk-ripple-get.lua' \
        'KEYS=$KEYS wrk_run ripple get "http://127.0.0.1:$ripple" bench/wrk-ripple-get.lua'
    pair 'ripple_bench ripple get "http://127.0.0.1:$ripple"' \
        'redis_run redis-no-persistence "$plain" get'
    redis_run redis-aof-always "$aof" get
    OP=range KEYS=$KEYS VALUE_SIZE=$VALUE_SIZE wrk_run etcd get "http://127.0.0.1:$etcd" bench/wrk-etcd.lua
    stop_all
done

machine="$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), Linux $(uname -r)"
python3 - "$results" "$OUT" "$machine" "$CONNS" "$VALUE_SIZE" "$KEYS" "$DURATION" "$ROUNDS" <<'EOF'
import sys, datetime, statistics
path, out, machine, conns, size, keys, duration, rounds = sys.argv[1:9]
rows = [l.split() for l in open(path) if l.strip()]
# (store, workload, client) -> every round's (ops/s, p50, p99), in order seen.
runs = {}
for r in rows:
    runs.setdefault((r[0], r[1], r[5]), []).append((float(r[2]), float(r[3]), float(r[4])))
def median(key, i):
    return statistics.median(run[i] for run in runs[key])
def get(store, wl, tool=None):
    """The median ops/s of STORE WORKLOAD (by TOOL when given)."""
    key = next((k for k in runs if k[0] == store and k[1] == wl and tool in (None, k[2])), None)
    return median(key, 0) if key else None
lines = [
    "# Side-by-side results",
    "",
    f"Written by `bench/compare.sh` on {datetime.date.today()}: {machine}.",
    f"Every store on loopback on this one machine, client and server sharing its cores;",
    f"{conns} connections, {size}-byte values, {keys} keys, {duration} s per run,",
    f"{rounds} rounds (each: every store's writes, then its reads; the runs a ratio compares",
    f"back to back, in turns going first); medians of the rounds.",
    "",
    "| store | workload | ops/s (median) | each round | p50 ms | p99 ms | client |",
    "|---|---|---:|---|---:|---:|---|",
]
for key, rs in runs.items():
    each = ", ".join(f"{r[0]:,.0f}" for r in rs)
    lines.append(f"| {key[0]} | {key[1]} | {median(key, 0):,.0f} | {each} | {median(key, 1):g} | {median(key, 2):g} | {key[2]} |")
lines += ["", "## Ripple's ratios (of the medians)", "", "| comparison | ratio | target |", "|---|---:|---:|"]
def ratio(name, a, b, target):
    if a and b:
        lines.append(f"| {name} | {a / b:.2f}x | {target} |")
ripple_get_wrk = get("ripple", "get", "wrk")
ripple_get_own = get("ripple", "get", "ripple-bench")
ratio("Ripple GET / HTTP floor (both wrk, same script)", ripple_get_wrk, get("floor", "get"), ">= 0.8x")
ratio("Ripple GET (ripple bench) / Redis GET, no persistence", ripple_get_own, get("redis-no-persistence", "get"), ">= 0.8x")
ratio("Ripple durable PUT / Redis SET, appendfsync always", get("ripple", "put"), get("redis-aof-always", "put"), ">= 0.5x")
ratio("Ripple durable PUT / etcd PUT", get("ripple", "put"), get("etcd", "put"), ">= 3x")
ratio("Ripple GET (ripple bench) / etcd GET", ripple_get_own, get("etcd", "get"), "")
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
