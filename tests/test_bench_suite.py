"""The benchmark suite's outer layers work end to end: pytest-benchmark over the registry
(saved JSON with the harness's metrics, --benchmark-compare between two saved runs), a
profile of a CPU case, and the asv dashboard rendering its graphs in headless Chromium."""

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CASE = "greedy-gamma-c2048"  # 1M lengths: Numba ~1 ms, the Python reference ~0.1 s


def _pytest_bench(tmp_path, *args):
    # a pytest of its own: under xdist, PYTEST_XDIST_WORKER in the environment would make
    # pytest-benchmark disable itself
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "bench/test_bench.py", "-q", "-p",
         "no:cacheprovider", "--benchmark-only", "-k", f"packing/{CASE}",
         f"--benchmark-storage=file://{tmp_path}", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_pytest_benchmark_saves_metrics_and_compares_runs(tmp_path):
    for _ in range(2):
        run = _pytest_bench(tmp_path, "--benchmark-autosave")
        assert run.returncode == 0, run.stdout + run.stderr
    assert "speedups in this session" in run.stdout
    saved = sorted(tmp_path.rglob("*.json"))
    assert len(saved) == 2
    benchmarks = json.loads(saved[-1].read_text())["benchmarks"]
    assert {b["extra_info"]["impl"] for b in benchmarks} == {"numba", "python"}
    for b in benchmarks:
        info = b["extra_info"]
        assert b["group"] == f"packing/{CASE}" and info["reference"] == "python"
        assert info["max_error"] == 0 and info["peak_mem_bytes"] > 0 and info["threads"] >= 1
        assert info["role"] == ("reference" if info["impl"] == "python" else "ours")
        assert info["bins"] >= info["min_bins"] > 0 and 0 < info["efficiency"] <= 1
        # the speedup is the reference's median over this one's, from the same run
        ref = next(x for x in benchmarks if x["extra_info"]["impl"] == "python")
        assert info["vs_reference"] == pytest.approx(ref["stats"]["median"] /
                                                     b["stats"]["median"])
    fast = next(b for b in benchmarks if b["extra_info"]["impl"] == "numba")
    assert fast["extra_info"]["vs_reference"] > 10
    # --benchmark-compare against the first saved run, failing on a 100x slowdown only
    run = _pytest_bench(tmp_path, "--benchmark-compare=0001",
                        "--benchmark-compare-fail=median:10000%")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0001" in run.stdout and "NOW" in run.stdout
    # against a saved run made 1000x faster by hand, the same check must fail
    first = json.loads(saved[0].read_text())
    for b in first["benchmarks"]:
        b["stats"] = {k: v / 1000 if isinstance(v, float) else v for k, v in b["stats"].items()}
    saved[0].write_text(json.dumps(first))
    run = _pytest_bench(tmp_path, "--benchmark-compare=0001",
                        "--benchmark-compare-fail=median:10000%")
    assert run.returncode != 0 and "Performance has regressed" in run.stdout + run.stderr


def test_profile_of_a_cpu_case(tmp_path):
    from kernelsuite import cli

    assert cli.main(["profile", f"packing/{CASE}", "--seconds", "1", "--out",
                     str(tmp_path)]) == 0
    folder = tmp_path / "packing" / CASE
    assert (folder / "flame-numba.svg").read_text().lstrip().startswith("<?xml")
    speedscope = json.loads((folder / "speedscope-numba.json").read_text())
    assert speedscope["profiles"] and speedscope["shared"]["frames"]
    top = (folder / "top-numba.txt").read_text()
    assert "pack_sequences" in top  # the samples fall in the kernel's call, not in imports
    assert "_compile_bytecode" not in top
    assert cli.main(["profile", "packing/nope"]) == 2


def test_torch_profiler_trace_of_an_attention_case(tmp_path):
    """The torch.profiler path (what CUDA cases use) on a CPU case: trace, table, memory."""
    from kernelsuite import cli

    case = "attention/fwd-float32-causal-d64-s512-b1h8"
    assert cli.main(["profile", case, "--tool", "torch", "--impl", "torch", "--out",
                     str(tmp_path)]) == 0
    folder = tmp_path / case
    trace = json.loads((folder / "trace-torch.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"aten::bmm", "aten::exp"} <= names  # the reference: matmuls and a softmax
    table = (folder / "key_averages-torch.txt").read_text()
    assert "aten::bmm" in table and "Self CPU" in table
    assert (folder / "memory-torch.html").stat().st_size > 0


def test_profile_of_a_gpu_case_on_the_cpu_without_allocations(tmp_path, monkeypatch):
    """--gpu-case finds a GPU case (the dry run profiles them on the CPU); a call that
    allocates nothing torch tracks (the Numba loader's batches come from numpy) gets a note
    instead of a memory timeline, not a crash."""
    from kernelsuite import cli
    from kernelsuite.harness.cases import data

    monkeypatch.setenv("KERNELSUITE_BENCH_DATA", str(tmp_path / "corpus"))
    data._corpus.cache_clear()
    case = "data/tokens-b4-s128"
    assert cli.main(["profile", case, "--tool", "torch", "--device", "cpu", "--gpu-case",
                     "--out", str(tmp_path)]) == 0
    folder = tmp_path / case
    assert (folder / "trace-numba.json").stat().st_size > 0
    memory = folder / "memory-numba.txt"
    if memory.exists():
        assert "recorded no allocation" in memory.read_text()
    else:
        assert (folder / "memory-numba.html").stat().st_size > 0
    assert cli.main(["profile", "padding/pad-p50-4x64x64", "--device", "cpu"]) == 2  # GPU's


def _serve(directory):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium "
                    "(ci/test.sh installs it)")
def test_published_dashboard_renders_graphs(tmp_path):
    sys.path.insert(0, str(ROOT / "ci"))
    from dashboard import vendor  # ci/dashboard.py

    html = tmp_path / "html"
    conf = tmp_path / "asv.conf.json"
    branch = subprocess.run(["git", "branch", "--show-current"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip() or "main"
    conf.write_text(json.dumps({
        "version": 1, "project": "kernelsuite", "repo": str(ROOT), "branches": [branch],
        "environment_type": "existing", "benchmark_dir": str(ROOT / "bench/asv_bench"),
        "results_dir": str(ROOT / "bench/asv_results"), "html_dir": str(html)}))
    run = subprocess.run([sys.executable, "-m", "asv", "--config", str(conf), "publish"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert vendor(html)  # the CDN libraries, from npm
    index = json.loads((html / "index.json").read_text())
    name = "suites.PackingCPU.time_call"
    assert name in index["benchmarks"] and "AMD-EPYC" in index["params"]["machine"]
    server = _serve(html)
    try:
        dom = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
             "--virtual-time-budget=20000", "--dump-dom",
             f"http://127.0.0.1:{server.server_port}/#{name}"],
            capture_output=True, text=True, timeout=120).stdout
    finally:
        server.shutdown()
    assert "failed to load" not in dom
    assert dom.count('class="flot-base"') >= 1  # flot drew the graph's canvas
    assert "flot-tick-label" in dom and "ffd-gamma-c2048" in dom
