#!/usr/bin/env bash
# Sourced by the side-by-side scripts (bench/lag.sh, bench/catchup.sh):
# runs every binary in turn, round after round, so that a machine whose
# speed drifts affects them alike; prints each run, then the median of
# each figure per binary.
#
#   alternate ROUNDS NAMES BIN...
#
# Calls the caller's `run BIN` once per binary per round; it prints its
# figures on one line, separated by spaces. NAMES names them, separated
# by commas.
alternate() {
    local rounds=$1 names=$2 results line
    shift 2
    results=$(mktemp)
    for round in $(seq 1 "$rounds"); do
        for bin in "$@"; do
            line=$(run "$bin")
            echo "round $round  $bin  $names: $line"
            echo "$bin $line" >>"$results"
        done
    done
    echo
    echo "medians over $rounds rounds:"
    python3 - "$results" "$names" "$@" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
names = [n.strip() for n in sys.argv[2].split(",")]
for bin in sys.argv[3:]:
    mine = [list(map(float, r[1:])) for r in rows if r[0] == bin]
    med = [statistics.median(col) for col in zip(*mine)]
    text = [f"{m:,.2f}".rstrip("0").rstrip(".") for m in med]
    print(f"{bin}: " + ", ".join(f"{n} {t}" for n, t in zip(names, text)))
PY
    rm -f "$results"
}
