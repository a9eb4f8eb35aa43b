#!/usr/bin/env bash
# The GPU job, for a machine with CUDA and torch + triton already installed (e.g. the
# H100/H200 device machine): GPU tests, the benchmark tables of every area and asv results.
# Writes into ${OUT:-gpu-out}/. Uses the Python it finds (PYTHON, default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "ci/gpu.sh: no CUDA GPU here; on a CPU machine run ci/test.sh and ci/bench.sh" >&2
    exit 2
}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
"$PY" -m pytest -q -x tests 2>&1 | tee "$OUT/tests.log" || status=1
"$PY" -m kernelsuite.cli bench attention ${BENCH_ARGS:-} --markdown "$OUT/attention.md" \
    --csv "$OUT/attention.csv" 2>&1 | tee "$OUT/bench.log" || status=1
for area in data padding; do
    "$PY" -m kernelsuite.cli bench "$area" --markdown "$OUT/$area.md" --csv "$OUT/$area.csv" \
        2>&1 | tee -a "$OUT/bench.log" || status=1
done
# packing is a CPU kernel: measured on this machine's CPU
"$PY" -m kernelsuite.cli bench packing --device cpu --markdown "$OUT/packing.md" \
    --csv "$OUT/packing.csv" 2>&1 | tee -a "$OUT/bench.log" || status=1
# pytest-benchmark JSON of the quick suite, for kernelsuite report
"$PY" -m pytest bench/test_bench_attention.py bench/test_bench_padding.py --benchmark-only \
    -q --benchmark-json "$OUT/pytest-benchmark.json" 2>&1 | tail -40 >> "$OUT/bench.log" || status=1
# a torch.profiler trace of the largest quick causal forward
"$PY" -m kernelsuite.cli profile attention/fwd-bfloat16-causal-d128-s16384-b1h16 \
    --out "$OUT/profiles" 2>&1 | tee -a "$OUT/bench.log" || status=1
# asv records results against a commit: it needs asv and a git checkout
if "$PY" -c "import asv" 2>/dev/null && git rev-parse HEAD >/dev/null 2>&1; then
    machine=$("$PY" -m kernelsuite.harness.devices)  # the GPU model
    "$PY" -m asv machine --yes --machine "$machine" >/dev/null
    # one asv run per area (ASV_SUITES): split them across calls where commands are time-limited
    for suite in ${ASV_SUITES:-AttentionCUDA PaddingCUDA DataCUDA}; do
        "$PY" -m asv run --python=same --machine "$machine" --set-commit-hash \
            "$(git rev-parse HEAD)" --bench "$suite\." 2>&1 | tee -a "$OUT/asv.log" || status=1
    done
    cp -r "bench/asv_results/$machine" "$OUT/asv_results_$machine"
else
    echo "ci/gpu.sh: asv skipped (needs asv installed and a git checkout)" | tee "$OUT/asv.log"
fi
exit $status
