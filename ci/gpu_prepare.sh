#!/usr/bin/env bash
# Before a GPU run, on a machine with network: fetch what the GPU image lacks, so that
# ci/gpu.sh runs there without one.
#   .whl/      python 3.12 x86-64 wheels of asv (+ asv_runner, json5, pympler,
#              importlib_metadata and its lazy-importer and zipp) and py-spy, at the
#              versions of ci/constraints.txt. The image already has asv's other needs
#              (packaging, pyyaml, tabulate, build);
#              asv's virtualenv is not needed with the "existing" environment.
#   .gpu/repo.git  a bare clone of this checkout: the device tool copies the working tree
#              without .git, and asv records results against a commit.
# Both are ignored by git; carry them: device run(carry=[".whl", ".gpu"], command=
#   "bash ci/gpu.sh --out /tmp/gpu-out --pack $OUT/gpu-run.tgz attention data decode padding").
# Usage: bash ci/gpu_prepare.sh [--python-version 3.12] [--dest DIR] (DIR default: .)
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=3.12 DEST=.
while [ $# -gt 0 ]; do
    case $1 in
        --python-version) PYVER=$2; shift ;;
        --dest) DEST=$2; shift ;;
        *) echo "ci/gpu_prepare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
PY=${PYTHON:-python3}
pin() { grep -E "^$1==" ci/constraints.txt | head -1; }
wheels=()
for name in asv asv_runner json5 pympler importlib_metadata lazy-importer zipp py-spy; do
    wheels+=("$(pin $name)")
done
mkdir -p "$DEST/.whl" "$DEST/.gpu"
rm -f "$DEST"/.whl/*.whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
    --platform manylinux1_x86_64 -d "$DEST/.whl" "${wheels[@]}"
rm -rf "$DEST/.gpu/repo.git"
git clone -q --bare "$PWD" "$DEST/.gpu/repo.git"
ls "$DEST"/.whl
echo "commit for asv: $(git -C "$DEST/.gpu/repo.git" rev-parse HEAD)"
