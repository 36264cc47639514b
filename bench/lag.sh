#!/usr/bin/env bash
# Replication lag, side by side: for each round, and each ripple binary
# given, starts a fresh 3-node `ripple dev-cluster` on loopback, writes at
# a steady rate through all three nodes with `ripple bench`, and stops the
# cluster. Binaries alternate within a round, so a machine whose speed
# drifts affects them alike. Prints each run, then the medians per binary.
#
#   bash bench/lag.sh [-r ROUNDS] [-d SECONDS] [-w WRITES_PER_S] BIN...
#   bash bench/lag.sh -r 2 -d 40 ./ripple-before target/release/ripple
#
# Defaults: 2 rounds, 40 s runs, 5,000 writes/s over 128 connections,
# 100k keys. A 10 s run gives only 500 lag samples, whose p99 moves a lot
# from run to run; 40 s runs are steadier.
set -euo pipefail
# shellcheck source=bench/rounds.sh
source "$(dirname "$0")/rounds.sh"

rounds=2
seconds=40
rate=5000
while getopts "r:d:w:" opt; do
    case $opt in
    r) rounds=$OPTARG ;;
    d) seconds=$OPTARG ;;
    w) rate=$OPTARG ;;
    *) echo "usage: $0 [-r ROUNDS] [-d SECONDS] [-w WRITES_PER_S] BIN..." >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
if [ $# -eq 0 ]; then
    echo "usage: $0 [-r ROUNDS] [-d SECONDS] [-w WRITES_PER_S] BIN..." >&2
    exit 2
fi
for bin in "$@"; do
    [ -x "$bin" ] || { echo "$0: not an executable: $bin" >&2; exit 2; }
done

ports=(18070 18071 18072)
urls="http://127.0.0.1:18070,http://127.0.0.1:18071,http://127.0.0.1:18072"
work=$(mktemp -d)
cluster=""
stop_cluster() {
    if [ -n "$cluster" ]; then
        kill "$cluster" 2>/dev/null || true
        wait "$cluster" 2>/dev/null || true
        cluster=""
    fi
}
trap 'stop_cluster; rm -rf "$work"' EXIT

# Prints "lag_median lag_p99 put_p99" (ms) and the CPU each node used
# (cores, the mean of the three over the run, warm-up included) for one
# run of $1.
run() {
    local bin=$1 dir
    for port in "${ports[@]}"; do
        # A node left over from another run would take the load instead.
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$0: port $port is in use; stop what listens there" >&2
            exit 1
        fi
    done
    dir=$(mktemp -d "$work/cluster.XXXX")
    "$bin" dev-cluster --nodes 3 --base-port 18070 --dir "$dir/data" >"$dir/cluster.log" 2>&1 &
    cluster=$!
    for _ in $(seq 1 100); do
        "$bin" status --url http://127.0.0.1:18072 >/dev/null 2>&1 && break
        kill -0 "$cluster" 2>/dev/null || { cat "$dir/cluster.log" >&2; exit 1; }
        sleep 0.1
    done
    sleep 1
    local nodes before after
    nodes=$(pgrep -P "$cluster" | tr '\n' ' ')
    if [ "$(echo "$nodes" | wc -w)" -ne 3 ]; then
        echo "$0: expected the cluster's 3 nodes as its children, found: $nodes" >&2
        exit 1
    fi
    before=$(cpu_ticks "$nodes")
    "$bin" bench --url "$urls" --workload put --rate "$rate" --connections 128 \
        --keys 100000 --duration "${seconds}s" --warmup 1s --json >"$dir/bench.json"
    after=$(cpu_ticks "$nodes") || { echo "$0: a node stopped during the run" >&2; exit 1; }
    stop_cluster
    python3 - "$dir/bench.json" "$before" "$after" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
lag = r["replication_lag"]
put = r["ops"]["put"]["latency_ms"]
ticks = int(sys.argv[3]) - int(sys.argv[2])
cores = ticks / int(sys.argv[4]) / (r["warmup_s"] + r["elapsed_s"]) / 3
print(f'{lag["median_ms"]:.2f} {lag["p99_ms"]:.2f} {put["p99"]:.2f} {cores:.2f}')
EOF
}

# CPU time (user and system, in clock ticks) the given processes used so
# far, summed.
cpu_ticks() {
    local total=0 pid ticks
    for pid in $1; do
        ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat") || return 1
        total=$((total + ticks))
    done
    echo "$total"
}

echo "$rate writes/s, ${seconds} s runs"
alternate "$rounds" "lag median ms, lag p99 ms, PUT p99 ms, cores per node" "$@"
