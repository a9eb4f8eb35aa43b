"""ci/gpu.sh --dry-run: the GPU job's script, run on this CPU machine the way CI runs it, so
that a typo, a missing file or a broken step cannot waste a GPU run (issue 14).

The dry run goes through every step of `ci/gpu.sh attention data decode padding` with tiny
shapes and Triton under the interpreter: preflight, the tests' collection, the benchmark tables,
a torch.profiler trace, the asv selection and one asv benchmark through the same command
line; what needs CUDA is reported as skipped. The checks read what it wrote.
"""

import csv
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AREAS = ("attention", "data", "decode", "padding")


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TRITON_"))}
    env.update(PYTHON=sys.executable, KERNELSUITE_BENCH_DATA=str(tmp_path / "corpus"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    return env


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu")
    out, pack = tmp / "out", tmp / "back" / "gpu-run.tgz"
    # a budget that a slow CI machine cannot spend: this checks the steps, not their time
    proc = subprocess.run(["bash", "ci/gpu.sh", "--dry-run", "--out", str(out), "--pack",
                           str(pack), *AREAS], cwd=ROOT, env=dict(_env(tmp), GPU_BUDGET_S="600"),
                          capture_output=True, text=True, timeout=900)
    return proc, out, pack


def _summary(out):
    rows = {}
    for line in (out / "summary.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[0] not in ("step", "---"):
            rows[cells[0]] = cells[1]
    return rows


@pytest.mark.slow
def test_dry_run_passes_every_step(dry_run):
    proc, out, _ = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = _summary(out)
    assert steps["preflight"] == "ok"
    for area in AREAS:
        for name in ("tests-collect", "bench", "profile", "asv-select", "asv"):
            assert steps[f"{area}-{name}"] == "ok", (area, name, steps)
        assert steps[f"{area}-tests"].startswith("skipped (needs CUDA")
    assert not [s for s in steps.values() if s.startswith(("failed", "timed out"))], steps


@pytest.mark.slow
def test_dry_run_tables_come_from_the_gpu_cases(dry_run):
    """The tables hold the GPU's implementations (Triton, interpreted here), every row has a
    time, a floor and a checked answer, and Triton's answers are right."""
    _, out, _ = dry_run
    for area, ours in (("attention", "triton"), ("data", "numba"), ("padding", "triton")):
        rows = list(csv.DictReader((out / area / "bench.csv").open()))
        assert rows and {r["impl"] for r in rows} >= {ours, "torch"}, (area, rows)
        for r in rows:
            assert float(r["median_ms"]) > 0 and float(r["floor_ms"]) > 0, r
            assert 0 < float(r["frac_peak"]) < 1.5, r
        errors = [float(r["max_error"]) for r in rows if r["impl"] == ours]
        assert errors and max(errors) < (2e-2 if area == "attention" else 1e-9), (area, errors)
        assert "floor_ms" in (out / area / "bench.md").read_text()


@pytest.mark.slow
def test_dry_run_writes_traces_preflight_and_one_pack(dry_run):
    _, out, pack = dry_run
    info = json.loads((out / "preflight.json").read_text())
    assert info["python"] and info["triton"] and info["machine"]
    for area in AREAS:
        traces = list((out / area / "profiles").rglob("trace-*.json"))
        assert traces and traces[0].stat().st_size > 1000, area
        chosen = (out / area / "asv-selected.txt").read_text().splitlines()
        assert chosen and all(f"{area.title()}CUDA." in c for c in chosen), chosen
    with tarfile.open(pack) as tar:
        names = tar.getnames()
    assert any(n.endswith("attention/bench.csv") for n in names)
    assert (pack.parent / "summary.md").exists()
    assert len(list(pack.parent.iterdir())) <= 8  # the device tool brings back 8 files


def test_unknown_area_and_option_are_refused(tmp_path):
    for args, message in ((["--dry-run", "decoder"], "unknown area 'decoder'"),
                          (["--frobnicate"], "unknown option --frobnicate")):
        proc = subprocess.run(["bash", "ci/gpu.sh", *args], cwd=ROOT, env=_env(tmp_path),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_without_cuda_the_real_run_refuses_to_start(tmp_path):
    proc = subprocess.run(["bash", "ci/gpu.sh", "--out", str(tmp_path / "o"), "padding"],
                          cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=120)
    if proc.returncode == 0:
        pytest.skip("this machine has CUDA")  # the real run is the GPU's own business
    assert proc.returncode == 2 and "no CUDA GPU here" in proc.stderr, proc.stderr


def test_budget_skips_what_it_cannot_fit(tmp_path):
    """With the budget spent, no step runs: each is listed as skipped, none silently lost."""
    env = dict(_env(tmp_path), GPU_BUDGET_S="5")
    proc = subprocess.run(["bash", "ci/gpu.sh", "--dry-run", "--out", str(tmp_path / "o"),
                           "padding"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    steps = _summary(tmp_path / "o")
    assert steps and all(s.startswith("skipped") for s in steps.values()), steps
    assert "padding-bench" in steps and proc.returncode == 0


def test_a_slow_area_leaves_the_next_its_share_of_the_budget(tmp_path):
    """Each area gets an equal share of what is left when it starts: an area whose step hangs
    is stopped at its share, and the next area still runs (it used to find the budget
    spent). The hang: a python that sleeps when asked to collect the attention tests."""
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\ncase "$*" in *test_attention.py*) exec sleep 600;; esac\n'
                    f'exec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    env = dict(_env(tmp_path), PYTHON=str(fake), GPU_BUDGET_S="60")
    proc = subprocess.run(["bash", "ci/gpu.sh", "--dry-run", "--steps", "tests", "--out",
                           str(tmp_path / "o"), "attention", "padding"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    steps = _summary(tmp_path / "o")
    assert steps["attention-tests-collect"].startswith("timed out after "), steps
    limit = int(steps["attention-tests-collect"].split()[3])
    assert 20 <= limit <= 30, steps  # half of the 60 s, less the preflight
    assert steps["padding-tests-collect"] == "ok" and proc.returncode == 1, steps


@pytest.mark.slow
def test_prepared_wheels_install_as_gpu_sh_installs_them(tmp_path):
    """ci/gpu_prepare.sh fetches asv and py-spy for the GPU image (python 3.12; the wheels
    are pure or abi3, so this Python installs them too): into a bare environment that has
    only what the image has of asv's needs, `pip install --no-index --no-deps` of them, as
    ci/gpu.sh does, gives a working asv and py-spy. Needs PyPI (CI has it)."""
    proc = subprocess.run(["bash", "ci/gpu_prepare.sh", "--dest", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode and "Could not" in proc.stderr + proc.stdout:
        pytest.skip(f"no package index reachable: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheels = sorted(p.name.split("-")[0].lower() for p in (tmp_path / ".whl").glob("*.whl"))
    assert wheels == ["asv", "asv_runner", "importlib_metadata", "json5", "lazy_importer",
                      "py_spy", "pympler", "zipp"], wheels
    bare = tmp_path / "image"
    subprocess.run([sys.executable, "-m", "venv", str(bare)], check=True)
    py = bare / "bin" / "python"
    image_has = ["packaging", "pyyaml", "tabulate", "build"]  # on the GPU image
    subprocess.run([py, "-m", "pip", "install", "-q", *image_has], check=True, timeout=300)
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    *map(str, (tmp_path / ".whl").glob("*.whl"))], check=True, timeout=300)
    version = subprocess.run([py, "-m", "asv", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "0.6" in version.stdout + version.stderr, version
    runner = subprocess.run([py, "-c", "import asv_runner, asv.util"], capture_output=True,
                            text=True)
    assert runner.returncode == 0, runner.stderr
    spy = subprocess.run([bare / "bin" / "py-spy", "--version"], capture_output=True,
                         text=True)
    assert spy.returncode == 0 and "py-spy" in spy.stdout, spy
    git = tmp_path / ".gpu" / "repo.git"
    head = subprocess.run(["git", "-C", str(git), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert head == subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                  text=True).stdout.strip()


def test_asv_select_names_benchmarks_as_asv_matches_them(tmp_path):
    env = _env(tmp_path)
    regex = r"PaddingCUDA\.time_call\('pad-p50', 'triton'\)"
    proc = subprocess.run([sys.executable, "ci/asv_select.py", regex], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["suites.PaddingCUDA.time_call('pad-p50', 'triton')"]
    none = subprocess.run([sys.executable, "ci/asv_select.py", "NoSuchSuite"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert none.returncode == 1 and "no asv benchmark matches" in none.stdout
