"""Property tests over the command line and the regression gate.

Random argv lists (subcommands, their options and junk values: negative, nan, huge numbers,
empty strings, unicode, NUL bytes, files that are missing, corrupt or valid) given to
kernelsuite.cli.main in-process either succeed (exit 0; compare: 1 exactly when it prints
regressions) or fail with exit 2 and a one-line `kernelsuite ...: error: ...`: never a
traceback. A value known to be invalid for an option always fails. Valid compare commands
exit as regressions() says. Nothing heavy runs: measuring, py-spy/torch.profiler, plots,
the sm_90 compiles and the benchmark notes are replaced by stand-ins, so every check and
table around them runs for real. (`kernelsuite shards` is fuzzed in test_fuzz_data.py.)

regressions() on random asv-like tables: identical data is never flagged, a head worse than
base by more than the factor with intervals apart always is (rates: lower by more than the
factor), and a change within the factor or an improvement never is.
"""

import contextlib
import io
import math
import re
import types

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernelsuite import cli
from kernelsuite.attention.api import HEAD_DIM_MAX, HEAD_DIM_MIN
from kernelsuite.harness import cases, devices, hopper, measure, profile, report, run
from kernelsuite.harness.cases import attention as attention_cases
from kernelsuite.harness.report import LARGER_IS_BETTER, read_asv, regressions
from test_report import pytest_benchmark_json, timings, write_asv

BASE, HEAD, OTHER = "a" * 40, "b" * 40, "ab" + "c" * 38  # "a" matches two commits


class Compiled(Exception):
    """The stand-in for hopper-static's compile sweep: raised with what it was given."""


def fake_measure(case, impl, device):
    """What measure.measure returns (its row), without running the case."""
    row = dict(kernel=case.kernel, case=case.name, impl=impl, role=case.role(impl),
               reference=case.reference, device=devices.device_name(device), **case.params,
               median_ms=1.0, q20_ms=0.9, q80_ms=1.1, runs=3, threads=1,
               **measure.rates(case, 1e-3, device), peak_mem_mb=1.0, max_error=0.0)
    return types.SimpleNamespace(row=lambda: row)


def fake_sweep(problems, jobs=1, on_rows=None):
    assert problems and jobs >= 1
    raise Compiled(len(problems))


def fake_write_report(long, out_dir):
    report.latest(long)  # the table the report is made of
    return []


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """cwd with results to read: asv (three commits on machine M), pytest-benchmark JSON,
    a corrupt file and rows that are not hopper-static's; the heavy steps stubbed."""
    monkeypatch.chdir(tmp_path)
    write_asv(tmp_path / "asv", "M", BASE, 1, {"suites.AttentionCPU.time_call": timings()})
    write_asv(tmp_path / "asv", "M", HEAD, 2, {"suites.AttentionCPU.time_call": timings(2)})
    write_asv(tmp_path / "asv", "M", OTHER, 3, {"suites.PackingCPU.time_call": timings()})
    pytest_benchmark_json(tmp_path / "pb.json", "AMD EPYC",
                          {("fwd-float32-full-d64-s512-b1h8", "torch"): 0.01})
    (tmp_path / "bad.json").write_text('{"benchmarks": [')
    (tmp_path / "rows.json").write_text('{"kernel": "fwd"}\n')
    (tmp_path / "dir").mkdir()
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))
    monkeypatch.setenv("KERNELSUITE_BENCH_DATA", str(tmp_path / "corpus"))
    for module, name, value in [
            (run, "measure", fake_measure), (profile, "_py_spy", lambda *a: []),
            (profile, "_torch_profile", lambda *a: []), (hopper, "sweep", fake_sweep),
            (report, "write_report", fake_write_report),
            (cases, "get_notes", lambda kernels=None, device="cpu": []),
            (attention_cases, "numba_first_call_seconds", lambda: (1.0, 0.1)),
            (devices, "cpu_matmul_flops", lambda threads: 1e11),
            (devices, "cpu_copy_bandwidth", lambda: 1e10)]:
        monkeypatch.setattr(module, name, value)
    return tmp_path


def call(argv):
    """(exit status, stdout, stderr, whether argparse exited) of cli.main(argv)."""
    out, err = io.StringIO(), io.StringIO()
    exited = False
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code, exited = e.code, True
        except Compiled:
            code = 0  # hopper-static got as far as compiling
    return code, out.getvalue(), err.getvalue(), exited


FLAG = ()
# command -> (positional values, option -> values that make sense there; FLAG: no value)
GRAMMAR = {
    "bench": (["attention", "packing", "data", "padding"], {
        "--device": ["cpu", "cpu:0", "cuda"], "--impl": ["torch", "numba", "sdpa_flash",
                                                         "triton", "nanogpt_get_batch"],
        "--tiny": FLAG, "--all": FLAG, "--quick": FLAG, "--markdown": ["out.md", "dir/t.md"],
        "--csv": ["out.csv"], "--list": FLAG, "--threads": ["1", "2"], "--busy-core": FLAG}),
    "report": ([], {"--asv-results": ["asv"], "--pytest-json": ["pb.json"],
                    "--out": ["rep", "dir"]}),
    "compare": ([BASE, HEAD, OTHER, BASE[:7], HEAD[:4]], {
        "--machine": ["M"], "--factor": ["1.2", "2", "1.01", "10"], "--asv-results": ["asv"]}),
    "profile": (["packing/ffd-gamma-c2048", "padding/pad-p50-4x64x64", "data/tokens-b4-s128",
                 "attention/fwd-float32-full-d64-s512-b1h8"], {
        "--impl": ["torch", "numba", "triton"], "--device": ["cpu"], "--out": ["prof"],
        "--seconds": ["0.5", "5"], "--native": FLAG, "--tool": ["auto", "py-spy", "torch"],
        "--gpu-case": FLAG}),
    "roofline": ([], {"--gpu": ["H100", "H200"], "--out": ["r.md"]}),
    "hopper-static": ([], {
        "--out": ["h.md"], "--json": FLAG, "--dtype": ["fp16", "bf16", "fp32"],
        "--head-dim": ["64", "128", "256"], "--no-features": FLAG, "--no-padding": FLAG,
        "--no-attention": FLAG, "--candidates": FLAG, "--jobs": ["1", "2"],
        "--from-json": ["rows.json", "bad.json", "missing"]}),
}
POSITIONALS = {"bench": (0, 2), "report": (0, 0), "compare": (2, 2), "profile": (1, 1),
               "roofline": (0, 0), "hopper-static": (0, 0)}
NUMBERS = ["-1", "0", "1", "1.5", "2", "3", "nan", "inf", "-inf", "1e999", "-0",
           "99999999999999999999", "0x10", "1_000", "7"]
JUNK = ["", " ", "tpu", "cuda:1", "é", "\u2603", "nul\x00l", "--", "-h", "nosuch",
        "attention/", "/", "a", "missing", "dir", "bad.json", "missing/out.csv"]
WORDS = st.sampled_from(NUMBERS + JUNK)


@st.composite
def argvs(draw):
    """A command, its positionals and options, each value either one that makes sense
    there or junk; now and then a junk word anywhere, or an option of another command."""
    cmd = draw(st.sampled_from(list(GRAMMAR)))
    good, options = GRAMMAR[cmd]
    lo, hi = POSITIONALS[cmd]
    argv = [cmd] + [draw(st.sampled_from(good) | WORDS) for _ in range(draw(st.integers(lo,
                                                                                        hi)))]
    for _ in range(draw(st.integers(0, 4))):
        option = draw(st.sampled_from(sorted(options)))
        values = options[option]
        argv.append(option)
        if values is not FLAG:
            argv.append(draw(st.sampled_from(values) | WORDS))
    if draw(st.integers(0, 7)) == 0:
        others = sorted({o for _, opts in GRAMMAR.values() for o in opts})
        argv.insert(draw(st.integers(1, len(argv))), draw(st.sampled_from(others) | WORDS))
    return argv


def _bad_float(text, ok):
    try:
        return not ok(float(text))
    except ValueError:
        return True


def _bad_int(text, ok):
    try:
        return not ok(int(text))
    except ValueError:
        return True


def _bad_device(text):
    try:
        cases.check_device(text)
    except ValueError:
        return True
    return False


# command -> option -> whether a value is invalid there (a value that looks like an option
# is "expected one argument": invalid too)
INVALID = {
    "compare": {"--factor": lambda v: _bad_float(v, lambda x: math.isfinite(x) and x > 1)},
    "profile": {"--seconds": lambda v: _bad_float(v, lambda x: 0 < x <= profile.MAX_SECONDS),
                "--device": _bad_device},
    "bench": {"--device": _bad_device},
    "hopper-static": {"--jobs": lambda v: _bad_int(v, lambda n: n >= 1),
                      "--head-dim": lambda v: _bad_int(v, lambda d: d % 8 == 0 and
                                                       HEAD_DIM_MIN <= d <= HEAD_DIM_MAX)},
}
ERROR = re.compile(r"kernelsuite( [\w-]+)?: error: \S")


def known_invalid(argv) -> bool:
    rules = INVALID.get(argv[0], {})
    for i, word in enumerate(argv[1:], 1):
        if word in rules:
            value = argv[i + 1] if i + 1 < len(argv) else None
            if value is None or value.startswith("-") and value not in ("-1", "-0") \
                    or rules[word](value):
                return True
    return False


def test_every_argv_succeeds_or_fails_in_one_line(workdir):
    @settings(max_examples=250, deadline=None)
    @given(argv=argvs())
    def check(argv):
        code, out, err, exited = call(argv)
        assert "Traceback" not in err
        assert code in (0, 1, 2), (code, err)
        if code == 1:  # only the regression gate fails with 1, and says why
            assert argv[0] == "compare" and "significant regression(s)" in out
        if code == 2:
            lines = err.splitlines()
            assert lines and ERROR.match(lines[-1]), err
            if not exited:  # an error found at run time: the only line on stderr
                assert len(lines) == 1, err
        if "-h" not in argv and known_invalid(argv):
            assert code == 2, (argv, out, err)

    check()


def test_valid_compare_exits_as_regressions_says(workdir):
    long = read_asv(workdir / "asv")

    @settings(max_examples=60, deadline=None)
    @given(base=st.sampled_from([BASE, HEAD, BASE[:4], HEAD[:7], "bbbb"]),
           head=st.sampled_from([BASE, HEAD, HEAD[:4]]),
           factor=st.floats(1.0, 10.0, exclude_min=True))
    def check(base, head, factor):
        code, out, err, _ = call(["compare", "--asv-results", "asv", "--machine", "M",
                                  "--factor", repr(factor), base, head])
        expected = regressions(long, "M", base, head, factor)
        assert code == (1 if len(expected) else 0), (out, err)
        assert f"{expected.attrs['compared']} results compared" in out, out

    check()
    # OTHER shares no benchmark with BASE; "a" names two commits: nothing to compare
    for base in (OTHER, "a"):
        code, out, err, _ = call(["compare", "--asv-results", "asv", "--machine", "M", base,
                                  HEAD])
        assert code == 2 and err.count("\n") == 1 and "error:" in err


# --- regressions() on synthetic data --------------------------------------------------

METRIC_NAMES = ["time_s", "peak_mem_bytes", "max_error", "tflops", "gbps", "mtok_s"]


@st.composite
def tables(draw):
    """An asv-like long table of BASE on machine M: 1-6 benchmarks x 1-3 cases, positive
    values, with or without 99% intervals (spread: half width / value)."""
    rows = []
    for b in range(draw(st.integers(1, 6))):
        metric = draw(st.sampled_from(METRIC_NAMES))
        with_ci = draw(st.booleans())
        for c in range(draw(st.integers(1, 3))):
            value = draw(st.floats(1e-6, 1e6))
            spread = draw(st.floats(0.0, 0.3))
            rows.append(dict(machine="M", commit=BASE, date=1, kernel="k",
                             benchmark=f"suites.K.m{b}", metric=metric, case=f"c{c}",
                             impl="i", value=value,
                             ci_low=value * (1 - spread) if with_ci else None,
                             ci_high=value * (1 + spread) if with_ci else None))
    return pd.DataFrame(rows)


def as_head(base: pd.DataFrame, scale) -> pd.DataFrame:
    """BASE's table as HEAD's, each value (and interval) multiplied by scale(row): a row
    is made worse by scale > 1 when smaller is better, by scale < 1 when larger is."""
    head = base.copy()
    head["commit"], head["date"] = HEAD, 2
    for col in ("value", "ci_low", "ci_high"):
        head[col] = [None if v is None or v != v else v * scale(r)
                     for v, r in zip(base[col], base.itertuples())]
    return pd.concat([base, head], ignore_index=True)


def worse_by(s):
    """A scale making a row worse by the factor s (> 1)."""
    return lambda r: 1 / s if r.metric in LARGER_IS_BETTER else s


@settings(max_examples=150, deadline=None)
@given(base=tables(), factor=st.floats(1.01, 5.0), data=st.data())
def test_regressions_flag_exactly_the_significant_worsening(base, factor, data):
    n = len(base)
    same = regressions(as_head(base, lambda r: 1.0), "M", BASE, HEAD, factor)
    assert same.empty and same.attrs == dict(compared=n, base_only=0, head_only=0)

    # worse by more than the factor, and by enough that the intervals are apart
    spread = max(((r.ci_high - r.value) / r.value for r in base.itertuples()
                  if r.ci_high is not None and r.ci_high == r.ci_high), default=0.0)
    apart = (1 + spread) / (1 - spread)
    s = factor * apart * data.draw(st.floats(1.01, 10.0), label="margin")
    worse = regressions(as_head(base, worse_by(s)), "M", BASE, HEAD, factor)
    assert len(worse) == n
    want = {(r.benchmark, r.case): r.value * worse_by(s)(r) / r.value
            for r in base.itertuples()}
    for r in worse.itertuples():
        assert r.ratio == pytest.approx(want[(r.benchmark, r.case)], rel=1e-9)

    # the same change backwards is an improvement; a change within the factor is not flagged
    improved = as_head(base, worse_by(s))
    improved["commit"] = improved.commit.map({BASE: HEAD, HEAD: BASE})
    assert regressions(improved, "M", BASE, HEAD, factor).empty
    within = 1 + (factor - 1) * data.draw(st.floats(0.0, 0.99), label="within")
    assert regressions(as_head(base, worse_by(within)), "M", BASE, HEAD, factor).empty

    # what head lacks is counted, not compared; nothing in common is an error
    if n > 1:
        part = as_head(base, worse_by(s)).drop(index=n)  # head loses its first row
        flagged = regressions(part, "M", BASE, HEAD, factor)
        assert len(flagged) == n - 1
        assert flagged.attrs == dict(compared=n - 1, base_only=1, head_only=0)
    apart_names = as_head(base, lambda r: 1.0)
    apart_names.loc[apart_names.commit == HEAD, "impl"] = "other"
    with pytest.raises(ValueError, match="nothing to compare on 'M'"):
        regressions(apart_names, "M", BASE, HEAD, factor)

