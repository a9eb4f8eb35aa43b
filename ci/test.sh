#!/usr/bin/env bash
# Set up and run the test suite (CPU; GPU tests skip without CUDA) on each dependency set
# CI proves, each in a virtual environment of its own:
#   pinned  .venv         ci/constraints.txt         torch 2.13 / triton 3.6 / numpy 2.3
#                                                    (the GPU image's triton; its torch is 2.11)
#   newest  .venv-newest  ci/constraints-newest.txt  what `pip install` resolves today
#                                                    (torch 2.14.1, triton 3.8.0, numpy 2.4)
#   triton  .venv-triton  ci/constraints-newest-triton.txt  the newest triton (3.9.0, what
#                                                    CPU-only torch gets): Triton tests only
# A set runs the default job, then the static job (tests/test_triton_static.py: every
# Triton kernel compiled for sm_90; each set compiles a part, so that each stays near 15
# minutes on 2 cores: pinned bf16/fp32 at d64/d128, newest fp16/fp32 at d128, triton bf16
# at d64). The README's test command, and what .ci/run runs.
#   KERNELSUITE_DEPS=pinned|newest|triton   one set only (default: all, in that order)
#   ci/test.sh ARGS                  pytest ARGS instead of the two jobs (pinned set unless
#                                    KERNELSUITE_DEPS says otherwise)
set -euo pipefail
cd "$(dirname "$0")/.."
# the dashboard test opens the published asv dashboard in headless Chromium (Debian's)
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
        >/dev/null 2>&1 || echo "ci/test.sh: could not install chromium" >&2
fi

setup() {  # setup VENV CONSTRAINTS
    python3 -m venv "$1"
    "$1/bin/python" -m pip install -q --upgrade pip
    "$1/bin/python" -m pip install -q -c "$2" -e ".[dev]"
    "$1/bin/python" -c "import numpy, torch, triton; print('ci/test.sh: $1: torch', \
torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)"
}

run_set() {  # run_set NAME VENV CONSTRAINTS SELECTION STATIC_SELECTION [pytest args]
    local name=$1 venv=$2 constraints=$3 select=$4 static=$5
    shift 5
    local start=$SECONDS
    setup "$venv" "$constraints"
    if [ $# -gt 0 ]; then  # two workers: the Triton interpreter is CPU-bound
        "$venv/bin/python" -m pytest -n 2 "$@"
    else
        "$venv/bin/python" -m pytest -n 2 -m "not static" -k "$select"
        "$venv/bin/python" -m pytest -n 2 -m static -k "$static"
    fi
    echo "ci/test.sh: $name set passed in $((SECONDS - start)) s"
}

export HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}  # the same fuzz examples every run
deps=${KERNELSUITE_DEPS:-all}
case $deps in pinned|newest|triton|all) ;; *)
    echo "ci/test.sh: KERNELSUITE_DEPS must be pinned, newest, triton or all, got '$deps'" >&2
    exit 2;;
esac
# with pytest arguments and no KERNELSUITE_DEPS, only the pinned set
[ $# -gt 0 ] && [ "$deps" = all ] && deps=pinned
if [ "$deps" = all ] || [ "$deps" = pinned ]; then
    # static: bf16 and fp32 (the tile lists of tensor-core and exact products) at head_dim
    # 64 and 128, and pad/unpad. fp16 compiles to the same registers and spills as bf16 on
    # every tile (bench/report/hopper-static.md); the newest set compiles it.
    run_set pinned .venv ci/constraints.txt "" "not fp16" "$@"
fi
if [ "$deps" = all ] || [ "$deps" = newest ]; then
    # static: fp16 and fp32 at head_dim 128, and pad/unpad
    run_set newest .venv-newest ci/constraints-newest.txt "" \
        "fp16-128 or fp32-128 or pad_unpad" "$@"
fi
if [ "$deps" = all ] || [ "$deps" = triton ]; then
    run_set triton .venv-triton ci/constraints-newest-triton.txt "triton or padding" \
        "bf16-64 or pad_unpad" "$@"
fi
