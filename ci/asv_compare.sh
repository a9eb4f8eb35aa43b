#!/usr/bin/env bash
# Benchmark two commits with asv on this machine and fail if the second is significantly
# worse: time, peak memory or error up, or TFLOP/s, GB/s, Mtok/s, fraction of peak down, by
# more than FACTOR (default 1.2) with non-overlapping 99% confidence intervals where asv
# has them (kernelsuite compare). asv continuous needs an environment it can build; this
# project benchmarks the Python it runs in ("existing"), so each commit is checked out in
# a git worktree and asv runs that checkout's suite, which imports that checkout's code
# (bench/asv_bench/__init__.py; asv does not pass PYTHONPATH on). Commits older than that
# file measure the installed kernelsuite instead: compare commits from 2026-11-22 on.
#
#   ci/asv_compare.sh BASE [HEAD] [asv run arguments, default: --bench 'CPU\.' or 'CUDA\.']
#   e.g. ci/asv_compare.sh HEAD~1 HEAD --bench 'PackingCPU'
#
# Results go to bench/asv_results/<machine>/ like any asv run (commit them to keep them).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n 2,14p "$0"; exit 2; }
base=$(git rev-parse --verify "$1^{commit}")
head=$(git rev-parse --verify "${2:-HEAD}^{commit}")
shift $(( $# >= 2 ? 2 : 1 ))
PY=${PYTHON:-$PWD/.venv/bin/python3}  # python3: the environment name asv results carry
FACTOR=${FACTOR:-1.2}
machine=$("$PY" -m kernelsuite.harness.devices)
if [ $# -eq 0 ]; then
    if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        set -- --bench 'CUDA\.'
    else
        set -- --bench 'CPU\.'
    fi
fi
"$PY" -m asv machine --yes --machine "$machine" >/dev/null
work=$(mktemp -d)
trap 'git worktree prune; rm -rf "$work"' EXIT
for sha in "$base" "$head"; do
    tree="$work/${sha:0:8}"
    git worktree add --detach --quiet "$tree" "$sha"
    (cd "$tree" && "$PY" -m asv run --python=same --machine "$machine" \
        --set-commit-hash "$sha" "$@")
    mkdir -p "bench/asv_results/$machine"
    cp "$tree/bench/asv_results/$machine/${sha:0:8}"-*.json "bench/asv_results/$machine/"
    git worktree remove --force "$tree"
done
"$PY" -m asv compare --machine "$machine" --split --factor "$FACTOR" "$base" "$head" || true
exec "$PY" -m kernelsuite.cli compare --machine "$machine" --factor "$FACTOR" "$base" "$head"
