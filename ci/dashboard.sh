#!/usr/bin/env bash
# Publish the asv dashboard from the committed results of every machine into .asv/html,
# with its JavaScript libraries copied in (from npm) so it also renders offline, and print
# how to view it. Run ci/bench.sh (or ci/test.sh) first to have the virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m asv publish
"$PY" ci/dashboard.py .asv/html
echo "dashboard in .asv/html: view with '$PY -m http.server -d .asv/html 8080' and open http://localhost:8080"
