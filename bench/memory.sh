#!/usr/bin/env bash
# Memory with a million keys, measured the same way each time: one node
# (embedded engine, default settings) on a fresh data dir on loopback;
# `ripple bench --preload` writes every key of the key space once (64
# connections, 100-byte values); the node's resident memory (VmRSS) is
# read after the preload and again after 10 s of GETs over all the keys.
#
#   bash bench/memory.sh [-k KEYS] [BIN]
#   bash bench/memory.sh -k 1000000 target/release/ripple
#
# Defaults: 1,000,000 keys, target/release/ripple.
set -euo pipefail
cd "$(dirname "$0")/.."

keys=1000000
while getopts "k:" opt; do
    case $opt in
    k) keys=$OPTARG ;;
    *) echo "usage: $0 [-k KEYS] [BIN]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
bin=${1:-target/release/ripple}
[ -x "$bin" ] || { echo "$0: not an executable: $bin (build with cargo build --release)" >&2; exit 2; }

port=18270
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "$0: port $port is in use; stop what listens there" >&2
    exit 1
fi
work=$(mktemp -d)
node=""
cleanup() {
    if [ -n "$node" ]; then
        kill "$node" 2>/dev/null || true
        wait "$node" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

"$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/node.log" 2>&1 &
node=$!
for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    kill -0 "$node" 2>/dev/null || { cat "$work/node.log" >&2; exit 1; }
    sleep 0.02
done

rss_mb() { awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$node/status"; }

url="http://127.0.0.1:$port"
"$bin" bench --url "$url" --workload get --preload --keys "$keys" --value-size 100 \
    --connections 64 --requests 1 --warmup 0s --json >"$work/preload.json"
after_preload=$(rss_mb)
"$bin" bench --url "$url" --workload get --keys "$keys" --connections 64 \
    --duration 10s --warmup 2s --json >"$work/get.json"
after_gets=$(rss_mb)
python3 - "$work/preload.json" "$work/get.json" "$after_preload" "$after_gets" "$(du -sm "$work/data" | cut -f1)" <<'EOF'
import json, sys
pre = json.load(open(sys.argv[1]))["preload"]
get = json.load(open(sys.argv[2]))
print(f"preload: {pre['ok']:,} keys in {pre['elapsed_s']:.1f} s ({pre['keys_per_sec']:,.0f} keys/s), {pre['errors']} errors")
print(f"resident after the preload: {sys.argv[3]} MB")
print(f"GET over all keys: {get['throughput_ops_per_sec']:,.0f} ops/s, {get['errors']} errors")
print(f"resident after the GETs: {sys.argv[4]} MB")
print(f"data dir: {sys.argv[5]} MB")
EOF
