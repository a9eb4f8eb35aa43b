#!/usr/bin/env bash
# The GPU job: one run on a machine with CUDA, torch and triton installed (e.g. the H200
# device machine: python 3.12, torch 2.11, triton 3.6, no network), per area:
#   tests     the area's tests on the GPU (bf16, real sizes), JUnit XML + log
#   bench     the benchmark table (kernelsuite bench: time, floor_ms, frac_peak, ratios)
#   profile   a torch.profiler trace of the area's largest case
#   asv       asv results of a selection of the area's CUDA suite (ASV_<AREA> regex)
# after a preflight (versions, GPU, measured ceilings). Everything goes into one folder
# (--out, default gpu-out/); --pack FILE also writes it as one tar.gz (the device tool
# brings back at most 8 files). A time budget (GPU_BUDGET_S, default 450 s) bounds the
# whole run: a step never runs past it, and steps it leaves out are listed as skipped.
# Each area gets an equal share of what is left when it starts (time an area does not use
# passes on), so a slow first area cannot leave the others nothing.
#
#   bash ci/gpu.sh [--dry-run] [--out DIR] [--pack FILE] [--steps tests,bench,profile,asv]
#                  AREA...        (areas: attention data decode padding; default: all)
#
# --dry-run: the same steps on a CPU machine, in seconds: tiny shapes, Triton under
# TRITON_INTERPRET=1, the tests collected, one asv benchmark through the same command
# line, and what needs CUDA reported as skipped (tests/test_gpu_script.py runs it in CI).
# asv and py-spy are not on the GPU image: ci/gpu_prepare.sh fetches their python 3.12
# wheels into .whl/ beforehand (and a git clone for asv into .gpu/); carry both.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
DRY=0 OUT_DIR=gpu-out PACK="" STEPS="tests,bench,profile,asv" AREAS=()
while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY=1 ;;
        --out) OUT_DIR=$2; shift ;;
        --pack) PACK=$2; shift ;;
        --steps) STEPS=$2; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        -*) echo "ci/gpu.sh: unknown option $1" >&2; exit 2 ;;
        *) AREAS+=("$1") ;;
    esac
    shift
done

# ------------------------------------------------------------------ the areas
declare -A TESTS=(
    [attention]="tests/test_attention.py tests/test_attention_api.py tests/test_triton_configs.py"
    [data]="tests/test_data_loader.py tests/test_data_shards.py"
    [decode]="tests/test_attention_kvcache.py"
    [padding]="tests/test_batching_padding.py tests/test_batching_collate.py"
)
# the case each area profiles (largest causal forward + backward for attention), and in
# a dry run its tiny twin
declare -A PROFILE=([attention]=attention/fwd_bwd-bfloat16-causal-d128-s16384-b1h16
                    [data]=data/tokens-b32-s2048 [decode]=decode/b64-ctx8192-bfloat16
                    [padding]=padding/pad-p50)
declare -A PROFILE_TINY=([attention]=attention/fwd_bwd-float16-causal-d64-s80-b1h2
                         [data]=data/tokens-b4-s128 [decode]=decode/b2-ctx96-float16
                         [padding]=padding/pad-p50-4x64x64)
# asv: which (benchmark, case, impl) of the area's CUDA suite one run measures. Each is a
# fresh process (import, autotune, time: ~5-10 s on the GPU machine), so a run takes a
# selection; override with ASV_ATTENTION=... etc., or ASV_<AREA>=all.
declare -A ASV=(
    [attention]="${ASV_ATTENTION:-AttentionCUDA\.(time_call\('(fwd|fwd_bwd)-bfloat16-causal-d128-s(4096|16384)-.*'|track_peak_memory\('fwd_bwd-bfloat16-causal-d128-s16384-.*'), '(triton|sdpa_flash)'\)}"
    [data]="${ASV_DATA:-DataCUDA\.(time_call|track_mtok_s)\('tokens-b32-s2048', '(numba|torch)'\)}"
    [decode]="${ASV_DECODE:-DecodeCUDA\.(time_call|track_frac_peak)\('b64-ctx8192-bfloat16', '(triton|triton-paged|sdpa)'\)}"
    [padding]="${ASV_PADDING:-PaddingCUDA\.(time_call\('(unpad|pad)-p50', '(triton|torch)'|track_gbps\('(unpad|pad)-p50', 'triton')\)}"
)
KNOWN="attention data decode padding"
[ ${#AREAS[@]} -eq 0 ] && read -ra AREAS <<< "$KNOWN"
for area in "${AREAS[@]}"; do
    if [ -z "${TESTS[$area]+x}" ]; then
        echo "ci/gpu.sh: unknown area '$area' (known: $KNOWN)" >&2
        exit 2
    fi
done

# ------------------------------------------------------------------ set-up
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
SUMMARY=$OUT_DIR/summary.md
START=$(date +%s)
BUDGET=${GPU_BUDGET_S:-450}
AREA_END=$((START + BUDGET))  # where the current area's share of the budget ends
FAILED=0
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then  # asv, py-spy (ci/gpu_prepare.sh)
    # into the Python's own environment: asv starts its benchmark processes without
    # PYTHONPATH, so asv_runner must be importable without it; --target + PYTHONPATH only
    # where that environment is read-only (then asv cannot run, and says so)
    if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl; then
        site=${TMPDIR:-/tmp}/kernelsuite-site
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" .whl/*.whl && export PYTHONPATH="$PYTHONPATH:$site" PATH="$site/bin:$PATH"
    fi
    export PATH="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')"):$PATH"  # py-spy
fi
if [ $DRY = 1 ]; then
    export TRITON_INTERPRET=1
    CUDA=0
else
    "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || {
        echo "ci/gpu.sh: no CUDA GPU here (use --dry-run to check the script on a CPU)" >&2
        exit 2
    }
    CUDA=1
fi
{
    echo "# ci/gpu.sh $([ $DRY = 1 ] && echo '--dry-run ')${AREAS[*]}"
    echo
    echo "started $(date -u +%FT%TZ), budget ${BUDGET} s; logs in logs/, one folder per area"
    echo
    echo "| step | status | seconds |"
    echo "|---|---|---|"
} > "$SUMMARY"

record() {  # record STEP STATUS SECONDS
    echo "| $1 | $2 | $3 |" >> "$SUMMARY"
    printf 'ci/gpu.sh: %-22s %-40s %4s s\n' "$1" "$2" "$3" >&2
}

# step NAME LIMIT_S CMD...: runs CMD (output to logs/NAME.log) within LIMIT_S and what is
# left of the area's share of the budget; records ok / failed (rc) / timed out / skipped
step() {
    local name=$1 limit=$2 t0 rc left
    shift 2
    left=$((AREA_END - $(date +%s)))
    if [ $left -lt 10 ]; then
        record "$name" "skipped (budget of ${BUDGET} s spent; this area's share ended)" 0
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    t0=$(date +%s)
    mkdir -p "$OUT_DIR/logs"
    timeout --signal=INT --kill-after=15 "$limit" "$@" > "$OUT_DIR/logs/$name.log" 2>&1
    rc=$?
    local secs=$(($(date +%s) - t0))
    case $rc in
        0) record "$name" ok "$secs" ;;
        124|137) record "$name" "timed out after ${limit} s" "$secs"; FAILED=1 ;;
        *) record "$name" "failed (exit $rc): see logs/$name.log" "$secs"; FAILED=1 ;;
    esac
}

cuda_only() {  # cuda_only NAME WHY
    record "$1" "skipped (needs CUDA: $2)" 0
}

wants() { [[ ",$STEPS," == *",$1,"* ]]; }

# ------------------------------------------------------------------ preflight
step preflight 120 "$PY" - "$CUDA" "$OUT_DIR/preflight.json" <<'EOF'
import json, platform, shutil, subprocess, sys
import numba, numpy, torch, triton
cuda, out = sys.argv[1] == "1", sys.argv[2]
info = dict(python=platform.python_version(), torch=torch.__version__,
            triton=triton.__version__, numpy=numpy.__version__, numba=numba.__version__,
            git=shutil.which("git") is not None)
for name in ("asv", "pandas", "matplotlib", "pytest_benchmark", "xdist", "hypothesis"):
    try:
        info[name] = __import__(name).__version__
    except Exception as e:  # noqa: BLE001 - report, do not stop
        info[name] = f"missing ({type(e).__name__})"
spy = shutil.which("py-spy")
info["py-spy"] = subprocess.run([spy, "--version"], capture_output=True, text=True
                                ).stdout.strip() if spy else "missing"
from kernelsuite.harness import devices
if cuda:
    info.update(gpu=torch.cuda.get_device_name(), machine=devices.machine_name("cuda"),
                sms=torch.cuda.get_device_properties(0).multi_processor_count,
                bf16_matmul_tflops=devices.cuda_matmul_flops() / 1e12,
                device_copy_tbps=devices.cuda_copy_bandwidth() / 1e12,
                host_to_device_gbps=devices.cuda_host_to_device_bandwidth() / 1e9)
    smi = shutil.which("nvidia-smi")
    if smi:
        info["nvidia_smi"] = subprocess.run([smi, "--query-gpu=name,driver_version,clocks.sm,"
                                             "clocks.mem,power.draw,temperature.gpu",
                                             "--format=csv,noheader"], capture_output=True,
                                            text=True).stdout.strip()
else:
    info["machine"] = devices.machine_name("cpu")
print(json.dumps(info, indent=1))
json.dump(info, open(out, "w"), indent=1)
EOF

# ------------------------------------------------------------------ the steps
machine=$("$PY" -m kernelsuite.harness.devices 2>/dev/null || echo unknown)
commit=""
if git rev-parse HEAD >/dev/null 2>&1; then
    commit=$(git rev-parse HEAD)
elif [ -d .gpu/repo.git ] && command -v git >/dev/null; then
    # the working tree came without .git: make it a repository at the carried commit
    git init -q && git fetch -q .gpu/repo.git HEAD && git update-ref refs/heads/main FETCH_HEAD \
        && commit=$(git rev-parse FETCH_HEAD)
fi

areas_left=${#AREAS[@]}
for area in "${AREAS[@]}"; do
    now=$(date +%s)
    AREA_END=$((now + (START + BUDGET - now) / areas_left))
    areas_left=$((areas_left - 1))
    dir=$OUT_DIR/$area
    mkdir -p "$dir"
    if wants tests; then
        if [ $CUDA = 1 ]; then
            # the first config that fits instead of autotuning every shape: every config
            # is checked by tests/test_triton_configs.py; 8 workers compile in parallel
            step "$area-tests" 300 env KERNELSUITE_TRITON_AUTOTUNE=0 "$PY" -m pytest -q \
                -p no:cacheprovider -n "${GPU_TEST_WORKERS:-8}" --junitxml "$dir/tests.xml" \
                ${TESTS[$area]}
        else
            step "$area-tests-collect" 120 "$PY" -m pytest -q -p no:cacheprovider \
                --collect-only ${TESTS[$area]}
            cuda_only "$area-tests" "collected above"
        fi
    fi
    if wants bench; then
        size=$([ $DRY = 1 ] && echo --tiny || echo --quick)
        step "$area-bench" 300 "$PY" -m kernelsuite.cli bench "$area" $size \
            --markdown "$dir/bench.md" --csv "$dir/bench.csv"
    fi
    if wants profile; then
        if [ $DRY = 1 ]; then
            # the reference: the interpreter's thousands of ops would flood the trace
            step "$area-profile" 120 "$PY" -m kernelsuite.cli profile "${PROFILE_TINY[$area]}" \
                --impl torch --tool torch --device cpu --gpu-case --out "$dir/profiles"
        else
            step "$area-profile" 180 "$PY" -m kernelsuite.cli profile "${PROFILE[$area]}" \
                --tool torch --out "$dir/profiles"
        fi
    fi
    if wants asv; then
        regex=${ASV[$area]}
        [ "$regex" = all ] && regex="${area^}CUDA\."
        if ! "$PY" -c "import asv" 2>/dev/null; then
            record "$area-asv" "skipped (asv missing: run ci/gpu_prepare.sh, carry .whl)" 0
            FAILED=1
        elif [ -z "$commit" ]; then
            record "$area-asv" "skipped (no git checkout: run ci/gpu_prepare.sh, carry .gpu)" 0
            FAILED=1
        else
            step "$area-asv-select" 60 "$PY" ci/asv_select.py "$regex" --out "$dir/asv-selected.txt"
            if [ $DRY = 1 ]; then  # one benchmark through the same command line (skips)
                regex="^$(head -1 "$dir/asv-selected.txt" | sed 's/[][().*+?^$|\\]/\\&/g')$"
                extra="--quick --dry-run"
            else
                extra=""
            fi
            step "$area-asv" 400 bash -c '"$0" -m asv machine --yes --machine "$1" >/dev/null &&
                "$0" -m asv run --python=same --machine "$1" --set-commit-hash "$2" \
                    --show-stderr $4 --bench "$3"' "$PY" "$machine" "$commit" "$regex" "$extra"
            if [ $DRY = 0 ] && [ -d "bench/asv_results/$machine" ]; then
                mkdir -p "$OUT_DIR/asv_results"
                cp -r "bench/asv_results/$machine" bench/asv_results/benchmarks.json \
                    "$OUT_DIR/asv_results/"
            fi
        fi
    fi
done

echo >> "$SUMMARY"
echo "ended $(date -u +%FT%TZ) after $(($(date +%s) - START)) s" >> "$SUMMARY"
if [ -n "$PACK" ]; then
    mkdir -p "$(dirname "$PACK")"
    tar -czf "$PACK" -C "$(dirname "$OUT_DIR")" "$(basename "$OUT_DIR")"
    cp "$SUMMARY" "$(dirname "$PACK")/summary.md" 2>/dev/null || true
fi
cat "$SUMMARY"
exit $FAILED
