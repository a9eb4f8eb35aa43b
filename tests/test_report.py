"""kernelsuite report and compare read asv and pytest-benchmark results as they are written,
and the regression check fails exactly on significant worsening."""

import json

import pandas as pd
import pytest

from kernelsuite import cli
from kernelsuite.harness.report import latest, read_asv, read_pytest_benchmark, regressions

COLUMNS = ["result", "params", "version", "started_at", "duration", "stats_ci_99_a",
           "stats_ci_99_b", "stats_q_25", "stats_q_75", "stats_number", "stats_repeat",
           "samples", "profile"]
CASES = ["fwd-float32-full-d64-s512-b1h8", "fwd-float32-full-d64-s2048-b1h8"]
IMPLS = ["numba", "torch"]


def write_asv(root, machine, commit, date, results):
    """An asv result file (format version 2) as `asv run` writes it. results: benchmark ->
    (values in case-major order, ci_low, ci_high)."""
    folder = root / machine
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "machine.json").write_text(json.dumps({"machine": machine, "version": 1}))
    params = [[repr(c) for c in CASES], [repr(i) for i in IMPLS]]
    out = {"commit_hash": commit, "env_name": "existing-py", "date": date,
           "params": {"machine": machine, "python": "3.11"}, "python": "3.11",
           "requirements": {}, "env_vars": {}, "result_columns": COLUMNS, "version": 2,
           "durations": {}, "results": {}}
    for name, (values, lo, hi) in results.items():
        out["results"][name] = [values, params, "1", date, 1.0, lo, hi, None, None, None,
                                None, None, None]
    (folder / f"{commit[:8]}-existing-py.json").write_text(json.dumps(out))


def timings(scale=1.0, spread=0.01):
    values = [0.010 * scale, 0.040, 0.100 * scale, 0.400]
    return (values, [v * (1 - spread) for v in values], [v * (1 + spread) for v in values])


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "asv_results"
    base, head = "a" * 40, "b" * 40
    write_asv(root, "AMD-EPYC", base, 1000, {
        "suites.AttentionCPU.time_call": timings(),
        "suites.AttentionCPU.track_tflops": ([1.0, 0.2, 2.0, 0.3], None, None),
        "suites.AttentionCPU.track_max_error": ([0.0, 1e-7, 0.0, 1e-7], None, None)})
    write_asv(root, "AMD-EPYC", head, 2000, {
        # numba 2x slower at s512 (significant), 1.1x at s2048 (under the factor)
        "suites.AttentionCPU.time_call": (
            [0.020, 0.040, 0.110, 0.400], [0.0198, 0.0396, 0.1089, 0.396],
            [0.0202, 0.0404, 0.1111, 0.404]),
        # TFLOP/s up at s512 (better), down 2x at s2048 (worse)
        "suites.AttentionCPU.track_tflops": ([1.5, 0.2, 1.0, 0.3], None, None),
        # an error that was exactly 0 is no longer
        "suites.AttentionCPU.track_max_error": ([0.0, 1e-7, 1e-6, 1e-7], None, None)})
    write_asv(root, "NVIDIA-H100-80GB-HBM3", head, 2000, {
        "suites.AttentionCPU.time_call": timings(0.1)})
    return root, base, head


def test_read_asv_long_table(results):
    root, base, head = results
    df = read_asv(root)
    assert set(df.machine) == {"AMD-EPYC", "NVIDIA-H100-80GB-HBM3"}
    assert set(df.metric) == {"time_s", "tflops", "max_error"}
    row = df[(df.commit == head) & (df.metric == "time_s") & (df.machine == "AMD-EPYC") &
             (df.case == CASES[0]) & (df.impl == "numba")].iloc[0]
    assert row.value == 0.020 and row.ci_low == 0.0198 and row.kernel == "attention"


def test_regressions_flag_significant_worsening_only(results):
    root, base, head = results
    worse = regressions(read_asv(root), "AMD-EPYC", base[:8], head[:8], factor=1.2)
    found = {(r.metric, r.case, r.impl) for r in worse.itertuples()}
    assert found == {("time_s", CASES[0], "numba"), ("tflops", CASES[1], "numba"),
                     ("max_error", CASES[1], "numba")}
    # overlapping confidence intervals are not significant, however large the ratio
    root2 = root.parent / "wide"
    write_asv(root2, "M", base, 1, {"suites.AttentionCPU.time_call": timings(1, 0.6)})
    write_asv(root2, "M", head, 2, {"suites.AttentionCPU.time_call": timings(1.5, 0.6)})
    assert regressions(read_asv(root2), "M", base, head).empty
    with pytest.raises(ValueError, match=r"commit 'cccc' matches none of the 2 commits with "
                                         r"results on 'AMD-EPYC' \(newest first\): "
                                         r"\['bbbbbbbb', 'aaaaaaaa'\]"):
        regressions(read_asv(root), "AMD-EPYC", "cccc", head)


def test_regressions_need_one_commit_each_and_something_in_common(results, tmp_path):
    root, base, head = results
    long = read_asv(root)
    # "" once matched every commit, and a prefix of two commits both: all compared with all
    with pytest.raises(ValueError, match="commit '' matches none of the 2 commits"):
        regressions(long, "AMD-EPYC", "", head)
    write_asv(root, "AMD-EPYC", "a1" + base[2:], 3000, {
        "suites.AttentionCPU.time_call": timings()})
    with pytest.raises(ValueError, match="commit 'a' matches 2 of the 3 commits"):
        regressions(read_asv(root), "AMD-EPYC", "a", head)
    with pytest.raises(ValueError, match=r"no asv results for machine 'M1'; machines with "
                                         r"results: \['AMD-EPYC', 'NVIDIA-H100-80GB-HBM3'\]"):
        regressions(long, "M1", base, head)
    # nothing in common: the gate used to pass, comparing nothing
    other = tmp_path / "other"
    write_asv(other, "M", base, 1, {"suites.AttentionCPU.time_call": timings()})
    write_asv(other, "M", head, 2, {"suites.PackingCPU.time_call": timings(5)})
    with pytest.raises(ValueError, match=r"nothing to compare on 'M': a+ \(4 results, e\.g\. "
                                         r"suites\.AttentionCPU\.time_call\) and b+ \(4, "
                                         r"e\.g\. suites\.PackingCPU\.time_call\)"):
        regressions(read_asv(other), "M", base, head)
    args = ["compare", "--asv-results", str(other), "--machine", "M", base, head]
    assert cli.main(args) == 2


def test_regressions_count_what_was_compared(results, capsys):
    root, base, head = results
    long = read_asv(root)
    half = long[~((long.commit == head) & (long.metric == "tflops"))]
    worse = regressions(half, "AMD-EPYC", base, head)
    assert worse.attrs == dict(compared=8, base_only=4, head_only=0)
    assert cli.main(["compare", "--asv-results", str(root), "--machine", "AMD-EPYC", head,
                     head]) == 0
    assert "(factor 1.2; 12 results compared)" in capsys.readouterr().out


@pytest.mark.parametrize("factor", ["nan", "inf", "-inf", "0", "-1", "1", "0.5", "x", ""])
def test_compare_factor_must_be_finite_and_above_one(results, factor, capsys):
    root, base, head = results
    with pytest.raises(SystemExit) as e:
        cli.main(["compare", "--asv-results", str(root), "--machine", "AMD-EPYC",
                  f"--factor={factor}", base, head])
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("kernelsuite compare: error: argument --factor: ")
    assert "factor must be a finite number > 1" in err or "could not convert" in err
    if factor not in ("x", ""):
        with pytest.raises(ValueError, match="factor must be a finite number > 1"):
            regressions(read_asv(root), "AMD-EPYC", base, head, float(factor))


def test_compare_cli_exit_status(results, capsys):
    root, base, head = results
    args = ["compare", "--asv-results", str(root), "--machine", "AMD-EPYC"]
    assert cli.main(args + [base[:8], head[:8]]) == 1
    assert "3 significant regression(s)" in capsys.readouterr().out
    assert cli.main(args + [head[:8], head[:8]]) == 0
    assert cli.main(args + ["--factor", "3", base[:8], head[:8]]) == 1  # error 0 -> 1e-6
    assert cli.main(args + ["deadbeef", head[:8]]) == 2


def pytest_benchmark_json(path, device, medians):
    benchmarks = [{"name": f"test_attention[{case}-{impl}]", "group": f"attention/{case}",
                   "stats": {"median": median},
                   "extra_info": {"kernel": "attention", "case": case, "impl": impl,
                                  "reference": "torch", "device": device, "tflops": 1 / median,
                                  "frac_peak": 0.5, "peak_mem_bytes": 2**20,
                                  "max_error": 1e-7}}
                  for (case, impl), median in medians.items()]
    path.write_text(json.dumps({"datetime": "2026-11-22T00:00:00", "benchmarks": benchmarks,
                                "commit_info": {"id": "c" * 40}}))


def test_report_writes_tables_and_plots_per_kernel(results, tmp_path):
    root, base, head = results
    pb = tmp_path / "pb.json"
    pytest_benchmark_json(pb, "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
                          {(CASES[0], "numba"): 0.005, (CASES[0], "torch"): 0.020})
    out = tmp_path / "report"
    assert cli.main(["report", "--asv-results", str(root), "--pytest-json", str(pb),
                     "--out", str(out)]) == 0
    table = pd.read_csv(out / "attention.csv")
    assert set(table.machine) == {"AMD-EPYC", "NVIDIA-H100-80GB-HBM3",
                                  "Intel-Xeon-Platinum-8481C"}
    # newest commit per machine; speedup = the reference's time / this time, same machine
    row = table[(table.machine == "AMD-EPYC") & (table.case == CASES[0]) &
                (table.impl == "numba")].iloc[0]
    assert row.time_ms == pytest.approx(20) and row.vs_reference == pytest.approx(2.0)
    assert row.tflops == 1.5 and row.commit == head
    xeon = table[table.machine == "Intel-Xeon-Platinum-8481C"].set_index("impl")
    assert xeon.loc["numba", "vs_reference"] == pytest.approx(4.0)
    assert xeon.loc["numba", "source"] == "pytest-benchmark"
    assert xeon.loc["numba", "peak_mem_mb"] == 1.0
    md = (out / "attention.md").read_text()
    assert "## NVIDIA-H100-80GB-HBM3" in md and "vs_reference" in md
    for plot in ("attention-throughput.png", "attention-speedup.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    assert "attention-throughput.png" in (out / "README.md").read_text()


def test_report_without_results_is_an_error(tmp_path, capsys):
    assert cli.main(["report", "--asv-results", str(tmp_path), "--out",
                     str(tmp_path / "r")]) == 2
    assert "no results" in capsys.readouterr().err
    missing = tmp_path / "nonexistent"
    for cmd in (["report", "--asv-results", str(missing)],
                ["compare", "--asv-results", str(missing), "--machine", "M", "a", "b"]):
        assert cli.main(cmd) == 2
        assert capsys.readouterr().err == (f"kernelsuite {cmd[0]}: error: no asv results "
                                           f"directory {str(missing)!r}\n")


def test_a_corrupt_or_missing_results_file_is_named(results, tmp_path, capsys):
    root, base, head = results
    bad = tmp_path / "bad.json"
    for text, why in [("{not json", f"{bad}: not valid JSON"),
                      ("[1, 2]", f"{bad}: not a pytest-benchmark JSON file"),
                      ('{"benchmarks": [{"extra_info": {"impl": 1}, "stats": {"median": '
                       '"slow"}}]}', f"{bad}: not a pytest-benchmark JSON file"),
                      ("\udcff", f"cannot read {str(bad)!r}: 'utf-8' codec")]:
        bad.write_text(text, errors="surrogateescape")
        assert cli.main(["report", "--asv-results", str(root), "--pytest-json", str(bad),
                         "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"kernelsuite report: error: {why}") and \
            err.count("\n") == 1, err
    assert cli.main(["report", "--pytest-json", "nul\x00.json"]) == 2
    assert "cannot read 'nul\\x00.json': embedded null byte" in capsys.readouterr().err
    assert cli.main(["report", "--pytest-json", str(tmp_path / "none.json")]) == 2
    assert "No such file or directory" in capsys.readouterr().err
    asv_file = next((root / "AMD-EPYC").glob("a*.json"))
    asv_file.write_text('{"result_columns": ["result"], "results": {"a.b.c": 3}}')
    for cmd in (["report", "--asv-results", str(root), "--out", str(tmp_path / "r")],
                ["compare", "--asv-results", str(root), "--machine", "AMD-EPYC", base, head]):
        assert cli.main(cmd) == 2
        assert capsys.readouterr().err.startswith(
            f"kernelsuite {cmd[0]}: error: {asv_file}: not an asv results file (")


def test_latest_prefers_the_newest_result(results):
    root, base, head = results
    long = pd.concat([read_asv(root), read_pytest_benchmark([])])
    t = latest(long)
    assert (t[t.machine == "AMD-EPYC"].commit == head).all()
