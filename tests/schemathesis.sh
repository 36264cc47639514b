#!/usr/bin/env bash
# Checks docs/openapi.yaml against a running node with schemathesis: every
# check (no 5xx, every status, header, content type and body as the spec
# says, valid requests accepted, invalid ones refused, undeclared methods
# 405 with Allow), over a bounded number of generated requests per
# operation. tests/schemathesis.toml says which documented 4xx answers count
# as the expected outcome of a valid request, and why.
#
#   tests/schemathesis.sh [path/to/ripple]     (default: target/debug/ripple)
#
# Environment (all optional):
#   SCHEMATHESIS_MAX_EXAMPLES  generated cases per operation and phase (100)
#   SCHEMATHESIS_SEED          the seed, for a reproducible run (fixed, so CI
#                              is deterministic; set "random" to explore)
#   SCHEMATHESIS_VENV          a venv to reuse, or to create and keep, with
#                              schemathesis installed (default: reuse
#                              target/schemathesis-venv if present, else a
#                              temporary one)
#
# Needs python3 (3.11 or later) and PyPI. On Debian, where python3-venv may
# be missing, it is installed with apt-get when running as root. Exits
# non-zero when any check fails, or when the node could not be started.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

SCHEMATHESIS_VERSION=4.32.5

caller=$PWD
cd "$(dirname "$0")/.."
root=$PWD
# A path given is taken from where the script was called; the default is
# the repository's debug build.
if [ $# -ge 1 ]; then
    bin=$1
    case "$bin" in /*) ;; *) bin="$caller/$bin" ;; esac
else
    bin=$root/target/debug/ripple
fi
if [ ! -x "$bin" ]; then
    echo "schemathesis.sh: no ripple binary at $bin (build it, or pass its path)" >&2
    exit 2
fi
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-100}
seed=${SCHEMATHESIS_SEED:-20261127}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ripple-schemathesis.XXXXXX")
node_pid=
cleanup() {
    if [ -n "$node_pid" ] && kill -0 "$node_pid" 2>/dev/null; then
        kill "$node_pid" 2>/dev/null || true
        wait "$node_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "schemathesis.sh: $*"; }

# --- schemathesis, in a venv -------------------------------------------------

python=$(command -v python3 || true)
if [ -z "$python" ]; then
    echo "schemathesis.sh: python3 is needed" >&2
    exit 2
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "schemathesis.sh: schemathesis $SCHEMATHESIS_VERSION needs Python 3.11 or later; $python is $("$python" -V 2>&1)" >&2
    exit 2
fi

# The `st` of a venv, when it has the pinned version.
venv_ready() {
    [ -x "$1/bin/st" ] && "$1/bin/st" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"
}

# Creates a venv at $1: python3 -m venv, after installing Debian's
# python3-venv when ensurepip is missing and we may; else virtualenv from
# PyPI through the system pip.
make_venv() {
    local dir=$1
    if [ -e "$dir" ] && [ ! -f "$dir/pyvenv.cfg" ] && [ -n "$(ls -A "$dir")" ]; then
        echo "schemathesis.sh: $dir exists and is not a venv; not touching it" >&2
        return 1
    fi
    rm -rf "$dir"
    if "$python" -m venv "$dir" >/dev/null 2>&1; then
        return 0
    fi
    rm -rf "$dir"
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        log "python3 -m venv does not work here; installing python3-venv"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >/dev/null
        if "$python" -m venv "$dir" >/dev/null 2>&1; then
            return 0
        fi
        rm -rf "$dir"
    fi
    if "$python" -m pip --version >/dev/null 2>&1; then
        log "falling back to virtualenv from PyPI"
        "$python" -m pip install -q --disable-pip-version-check --target "$tmp/virtualenv" virtualenv \
            || "$python" -m pip install -q --disable-pip-version-check --break-system-packages \
                --target "$tmp/virtualenv" virtualenv
        PYTHONPATH="$tmp/virtualenv" "$python" -m virtualenv -q "$dir"
        return 0
    fi
    echo "schemathesis.sh: cannot make a Python venv (install python3-venv or python3-pip)" >&2
    return 1
}

venv=${SCHEMATHESIS_VENV:-}
if [ -z "$venv" ] && venv_ready "$root/target/schemathesis-venv"; then
    venv=$root/target/schemathesis-venv
fi
venv=${venv:-$tmp/venv}
if venv_ready "$venv"; then
    log "using schemathesis $SCHEMATHESIS_VERSION from $venv"
else
    log "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
    if [ ! -x "$venv/bin/python" ]; then
        make_venv "$venv"
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
    if ! venv_ready "$venv"; then
        echo "schemathesis.sh: schemathesis $SCHEMATHESIS_VERSION did not install into $venv" >&2
        exit 1
    fi
fi

# --- a fresh node --------------------------------------------------------------

mkdir -p "$tmp/data" "$tmp/work"
# Port 0: the node picks a free port and prints its URL.
"$bin" serve --listen 127.0.0.1:0 --data-dir "$tmp/data" >"$tmp/node.log" 2>&1 &
node_pid=$!

base=
for _ in $(seq 1 300); do
    if ! kill -0 "$node_pid" 2>/dev/null; then
        echo "schemathesis.sh: the node exited:" >&2
        cat "$tmp/node.log" >&2
        exit 1
    fi
    base=$(grep -o 'listening on http://[0-9.:]*' "$tmp/node.log" | head -n 1 | sed 's/^listening on //' || true)
    if [ -n "$base" ] && "$python" - "$base/health" <<'EOF' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
    then
        break
    fi
    base=
    sleep 0.1
done
if [ -z "$base" ]; then
    echo "schemathesis.sh: the node did not answer /health within 30 s:" >&2
    cat "$tmp/node.log" >&2
    exit 1
fi
log "node at $base ($bin)"

# --- the run -------------------------------------------------------------------

seed_args=()
if [ "$seed" != random ]; then
    seed_args=(--seed "$seed")
fi
status=0
start=$(date +%s)
# From an empty directory, so Hypothesis and schemathesis leave no state in
# the repository. Every check is on (schemathesis' default). A hung run is
# cut after 10 minutes (it takes about one).
export SCHEMATHESIS_HOOKS="$root/tests/schemathesis_hooks.py"
(
    cd "$tmp/work"
    timeout 600 "$venv/bin/st" --config-file "$root/tests/schemathesis.toml" run "$root/docs/openapi.yaml" \
        --url "$base" \
        --max-examples "$max_examples" \
        "${seed_args[@]}" \
        --request-timeout 30 \
        --max-failures 50 \
        2>&1 | tee "$tmp/st.log"
) || status=$?
log "schemathesis finished in $(( $(date +%s) - start )) s with status $status"

# A crash inside schemathesis (a worker thread dying) leaves operations
# untested without failing the run.
if grep -aq -e '^Traceback' -e '^Exception in thread' "$tmp/st.log"; then
    echo "schemathesis.sh: schemathesis itself crashed (see the traceback above); operations may have gone untested" >&2
    status=1
fi
if grep -q 'panicked' "$tmp/node.log"; then
    echo "schemathesis.sh: the node panicked:" >&2
    grep -A5 'panicked' "$tmp/node.log" >&2
    status=1
fi
if ! kill -0 "$node_pid" 2>/dev/null; then
    echo "schemathesis.sh: the node died during the run:" >&2
    tail -n 50 "$tmp/node.log" >&2
    status=1
fi

# One plain closing line: "schemathesis: N passed, N failed", from the
# summary's "<generated> generated, <passed> passed" or "..., <n> found <m>
# unique failures".
summary=$(grep -aE '^ *[0-9]+ generated, ' "$tmp/st.log" | tail -n 1 || true)
generated=$(echo "$summary" | sed -nE 's/^ *([0-9]+) generated, .*/\1/p')
failed=$(echo "$summary" | sed -nE 's/.* ([0-9]+) found .*/\1/p')
failed=${failed:-0}
if [ "$status" != 0 ] && [ "$failed" = 0 ]; then
    failed=1
fi
if [ -n "$generated" ]; then
    passed=$(( generated > failed ? generated - failed : 0 ))
    echo "schemathesis: $passed passed, $failed failed"
fi
exit "$status"
