#!/usr/bin/env bash
# Set up a virtual environment and run the test suite (CPU; GPU tests skip without CUDA).
# The README's test command, and what .ci/run runs. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# the dashboard test opens the published asv dashboard in headless Chromium (Debian's)
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
        >/dev/null 2>&1 || echo "ci/test.sh: could not install chromium" >&2
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c ci/constraints.txt -e ".[dev]"
# two workers: the Triton interpreter is CPU-bound
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest -n 2 "$@"
fi
.venv/bin/python -m pytest -n 2 -m "not static"
# the static job: every Triton kernel and tile compiled for Hopper (sm_90) without a GPU,
# checked for register spills and shared memory (tests/test_triton_static.py)
exec .venv/bin/python -m pytest -n 2 -m static
