#!/usr/bin/env bash
# Set up a virtual environment and run the benchmark suite on this machine (the GPU when
# there is one), printing a table. The README's main command. Extra arguments go to
# `kernelsuite bench` (e.g. --all, or a kernel name).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c ci/constraints.txt -e ".[bench]"
exec .venv/bin/kernelsuite bench "$@"
