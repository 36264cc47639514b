#!/usr/bin/env bash
# Catch-up after downtime, measured the same way each time: a 3-node
# cluster on loopback; node n3 is stopped; while it is down, PUTs of
# distinct keys go through n1 (`ripple bench --preload`), and those whose
# master is n1 or n2 succeed (about 2 in 3: n3 masters the rest, which
# answer 503 while it is down). Then n3 is started again and
# `ripple sync --url n3` waits until it has caught up with both peers.
# The rate is the writes n3 missed over the time from its start (the
# process start included) to the end of the sync. Repeated for a few
# rounds, each on fresh data dirs; with several binaries they alternate
# within a round, so a machine whose speed drifts affects them alike.
# Prints each run, then the median per binary.
#
#   bash bench/catchup.sh [-r ROUNDS] [-k KEYS] [BIN...]
#   bash bench/catchup.sh -r 3 ./ripple-before target/release/ripple
#
# Defaults: 3 rounds, 150,000 keys (so that n3 misses about 100,000
# writes), 100-byte values, target/release/ripple.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/rounds.sh
source bench/rounds.sh

rounds=3
keys=150000
while getopts "r:k:" opt; do
    case $opt in
    r) rounds=$OPTARG ;;
    k) keys=$OPTARG ;;
    *) echo "usage: $0 [-r ROUNDS] [-k KEYS] [BIN...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || set -- target/release/ripple
for bin in "$@"; do
    [ -x "$bin" ] || { echo "$0: not an executable: $bin (build with cargo build --release)" >&2; exit 2; }
done

ports=(18170 18171 18172)
work=$(mktemp -d)
pids=(0 0 0)
stop_node() {
    local i=$1
    if [ "${pids[$i]}" != 0 ]; then
        kill "${pids[$i]}" 2>/dev/null || true
        wait "${pids[$i]}" 2>/dev/null || true
        pids[$i]=0
    fi
}
cleanup() {
    for i in 0 1 2; do stop_node "$i"; done
    rm -rf "$work"
}
trap cleanup EXIT

url() { echo "http://127.0.0.1:${ports[$1]}"; }

# Starts node $1 (0-based) of the cluster in $2 and waits for /health.
start_node() {
    local i=$1 dir=$2
    "$bin" serve --config "$dir/n$((i + 1)).toml" >>"$dir/n$((i + 1)).log" 2>&1 &
    pids[$i]=$!
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/${ports[$i]}") 2>/dev/null; then
            return 0
        fi
        kill -0 "${pids[$i]}" 2>/dev/null || { cat "$dir/n$((i + 1)).log" >&2; exit 1; }
        sleep 0.02
    done
    echo "$0: node n$((i + 1)) did not start" >&2
    exit 1
}

# Prints "missed seconds records_per_s" for one run of $1.
run() {
    local bin=$1 dir members
    dir=$(mktemp -d "$work/round.XXXX")
    members="{ id = \"n1\", url = \"$(url 0)\" }, { id = \"n2\", url = \"$(url 1)\" }, { id = \"n3\", url = \"$(url 2)\" }"
    for i in 0 1 2; do
        if (exec 3<>"/dev/tcp/127.0.0.1/${ports[$i]}") 2>/dev/null; then
            echo "$0: port ${ports[$i]} is in use; stop what listens there" >&2
            exit 1
        fi
        printf 'node_id = "n%s"\nlisten = "127.0.0.1:%s"\ndata_dir = "%s/n%s"\n\n[cluster]\nmembers = [%s]\n' \
            $((i + 1)) "${ports[$i]}" "$dir" $((i + 1)) "$members" >"$dir/n$((i + 1)).toml"
        start_node "$i" "$dir"
    done
    "$bin" sync --url "$(url 2)" >/dev/null
    stop_node 2
    "$bin" bench --url "$(url 0)" --workload put --preload --keys "$keys" --value-size 100 \
        --connections 64 --requests 1 --warmup 0s --json >"$dir/preload.json" 2>"$dir/preload.err" || true
    # Let n1 and n2 exchange their last writes, so that only n3 is behind
# (each sync then fails, as n3 is down: it waits only for the others).
    "$bin" sync --url "$(url 0)" --timeout-ms 2000 >/dev/null 2>&1 || true
    "$bin" sync --url "$(url 1)" --timeout-ms 2000 >/dev/null 2>&1 || true
    local start end
    start=$(date +%s.%N)
    start_node 2 "$dir"
    "$bin" sync --url "$(url 2)" --timeout-ms 120000 >/dev/null
    end=$(date +%s.%N)
    for i in 0 1 2; do stop_node "$i"; done
    python3 - "$dir/preload.json" "$start" "$end" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
missed = r["preload"]["ok"]
secs = float(sys.argv[3]) - float(sys.argv[2])
print(f"{missed} {secs:.3f} {missed / secs:.0f}")
EOF
    rm -rf "$dir"
}

alternate "$rounds" "missed writes, seconds (start included), records/s" "$@"
