#!/usr/bin/env bash
# A short fuzz run of every cargo-fuzz target, for CI: builds all targets in
# one cargo command, then fuzzes each for FUZZ_SECONDS (15 by default)
# starting from its corpus in fuzz/corpus/<target>/, and fails when any
# target finds a crash (the input is saved under fuzz/artifacts/<target>/).
#
# New inputs the fuzzer finds go to a scratch folder, never into the corpus
# kept in the repo. See docs/FUZZ.md.
#
#   FUZZ_SECONDS=60 bash fuzz/smoke.sh
#   FUZZ_BUILD="--release" bash fuzz/smoke.sh   # optimised + AddressSanitizer
#
# FUZZ_BUILD holds the cargo-fuzz build options. The default, an
# unoptimised build without AddressSanitizer, builds about twice as fast
# from cold as cargo fuzz's default (release with AddressSanitizer) and
# still catches every panic; the decoders are safe Rust, so a sanitizer
# adds little here.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-15}
read -r -a build <<<"${FUZZ_BUILD:---dev --sanitizer none}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# cargo fuzz needs nightly rustc flags; this lets the stable toolchain
# take them.
export RUSTC_BOOTSTRAP=1

mapfile -t targets < <(cargo fuzz list)
if [ "${#targets[@]}" -eq 0 ]; then
    echo "fuzz/smoke.sh: no fuzz targets" >&2
    exit 1
fi

start=$SECONDS
cargo fuzz build "${build[@]}"
echo "fuzz build: $((SECONDS - start)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

failed=()
for t in "${targets[@]}"; do
    if [ ! -d "fuzz/corpus/$t" ]; then
        echo "fuzz/smoke.sh: fuzz/corpus/$t is missing" >&2
        failed+=("$t (no corpus)")
        continue
    fi
    mkdir -p "$scratch/$t"
    echo "fuzzing $t for ${seconds} s"
    # The scratch folder first: libFuzzer writes new inputs to the first
    # corpus folder only. -timeout: an input that takes 10 s is a hang.
    if cargo fuzz run "${build[@]}" "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
        >"$scratch/$t.log" 2>&1; then
        grep -E '^Done [0-9]+ runs' "$scratch/$t.log" | sed "s/^/$t: /" || true
    else
        tail -n 80 "$scratch/$t.log" >&2
        echo "fuzz/smoke.sh: $t found a crash (input in fuzz/artifacts/$t/)" >&2
        failed+=("$t")
    fi
done

echo "fuzz smoke: $((SECONDS - start)) s in all"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz/smoke.sh: failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz smoke: ${#targets[@]} targets, no crash"
