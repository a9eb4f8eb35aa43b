"""pytest-benchmark over the harness registry: `pytest bench/ --benchmark-only [--bench-all]`.

Each test is one (case, implementation) of any area (test_bench.py); groups are cases
(kernel/shape), so each group compares implementations side by side. Speedups against
the case's reference and its fastest alternative (vs_reference, vs_best_alt) are
computed from the medians of the same session and written into each benchmark's
extra_info in the saved JSON, and printed.
"""

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pytest_addoption(parser):
    parser.addoption("--bench-all", action="store_true",
                     help="run the full sweep of every case (default: the quick subset)")


def pytest_generate_tests(metafunc):
    if "case_impl" not in metafunc.fixturenames:
        return
    from kernelsuite.harness.cases import get_cases

    size = "all" if metafunc.config.getoption("--bench-all") else "quick"
    pairs = [(c, impl) for c in get_cases(None, DEVICE, size) for impl in c.impls]
    metafunc.parametrize("case_impl", pairs, ids=[f"{c.id}-{impl}" for c, impl in pairs])


@pytest.fixture
def device():
    return DEVICE


def _speedups(rows):
    """rows: dicts with group, impl, role, median (s). Adds vs_reference and vs_best_alt
    (harness.measure.speedups), in the same order."""
    import pandas as pd

    from kernelsuite.harness.measure import speedups

    df = pd.DataFrame(rows).rename(columns={"group": "case"})
    df["median_ms"] = df.pop("median") * 1e3
    return speedups(df)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    done = [b for b in output_json["benchmarks"]
            if b.get("stats") and "impl" in b.get("extra_info", {})]
    if not done:
        return
    df = _speedups([dict(group=b["group"], impl=b["extra_info"]["impl"],
                         role=b["extra_info"]["role"], median=b["stats"]["median"])
                    for b in done])
    for b, vs_ref, vs_alt in zip(done, df.vs_reference, df.vs_best_alt):
        b["extra_info"]["vs_reference"] = None if vs_ref != vs_ref else float(vs_ref)
        b["extra_info"]["vs_best_alt"] = None if vs_alt != vs_alt else float(vs_alt)


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    rows = [dict(group=b.group, impl=b.extra_info["impl"], role=b.extra_info["role"],
                 median=b.stats.median)
            for b in getattr(session, "benchmarks", []) if b.stats and "impl" in b.extra_info]
    if rows:
        df = _speedups(rows)
        terminalreporter.write_sep("-", "speedups in this session (median of the reference, "
                                        "or of the fastest alternative, / median)")
        cols = [c for c in ("case", "impl", "median_ms", "vs_reference", "vs_best_alt")
                if df[c].notna().any()]
        terminalreporter.write_line(df[cols].to_markdown(index=False, floatfmt=".3g"))
