"""Results of every machine as tables and plots, and the regression check between commits.

Two sources, read with pandas into one long table (one row per machine, commit, case,
implementation and metric):
- asv results (bench/asv_results/<machine>/<commit>-<env>.json, all machines);
- pytest-benchmark JSON files (`pytest bench/ --benchmark-only --benchmark-json F` or
  --benchmark-save), whose extra_info holds the same metrics.
`write_report` writes per kernel area a Markdown and a CSV table (machine x implementation
x case: time, TFLOP/s or GB/s, % of peak, speedup against the reference, peak memory, max
error) and plots, plus an index README.md. `regressions` compares two commits' asv results.
"""

from __future__ import annotations

import ast
import json
import math
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from .cases import areas, get_cases
from .measure import geomean, speedups

# asv benchmark method (or pytest-benchmark field) -> metric column
METRICS = {"time_call": "time_s", "track_tflops": "tflops", "track_gbps": "gbps",
           "track_mtok_s": "mtok_s", "track_frac_peak": "frac_peak",
           "track_peak_memory": "peak_mem_bytes", "track_max_error": "max_error"}
# metrics where a larger value is better; for the others (time, memory, error) smaller is
LARGER_IS_BETTER = {"tflops", "gbps", "mtok_s", "frac_peak"}
COLUMNS = ["machine", "case", "impl", "time_ms", "tflops", "gbps", "mtok_s", "frac_peak",
           "vs_reference", "peak_mem_mb", "max_error", "commit", "source"]


def _kernel_of(cls: str) -> str:
    """suites.AttentionCPU -> attention (older suites: batching.Packing -> packing)."""
    return re.sub(r"(CPU|CUDA)$", "", cls).lower()


def read_asv(results_dir) -> pd.DataFrame:
    """Every value in asv result files of every machine: columns machine, commit, date,
    kernel, benchmark, metric, case, impl, value, ci_low, ci_high. A missing folder is a
    FileNotFoundError, a file that is not asv's a ValueError naming it."""
    if not Path(results_dir).is_dir():
        raise FileNotFoundError(f"no asv results directory {str(results_dir)!r}")
    rows = []
    for path in sorted(Path(results_dir).glob("*/*.json")):
        if path.name != "machine.json":
            rows += _parsed(path, "an asv results file", _asv_rows)
    return pd.DataFrame(rows, columns=["machine", "commit", "date", "kernel", "benchmark",
                                       "metric", "case", "impl", "value", "ci_low", "ci_high"])


def _parsed(path, what: str, rows_of) -> list[dict]:
    """rows_of(data) for a JSON file; ValueError naming the file when it is not
    valid JSON or not `what` (a missing key, a value of the wrong type)."""
    try:
        text = Path(path).read_text()
    except ValueError as e:  # not UTF-8, or a NUL in the name
        raise ValueError(f"cannot read {str(path)!r}: {e}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    try:
        return rows_of(data)
    except (KeyError, TypeError, ValueError, AttributeError, SyntaxError) as e:
        raise ValueError(f"{path}: not {what} ({type(e).__name__}: {e})") from None


def _asv_rows(data) -> list[dict]:
    rows = []
    if "result_columns" not in data:
        return rows
    cols = data["result_columns"]
    for name, values in data["results"].items():
        entry = dict(zip(cols, values))
        parts = name.split(".")
        if len(parts) < 3 or not entry.get("params"):
            continue
        method = parts[-1]
        metric = METRICS.get(method, "time_s" if method.startswith("time_") else method)
        combos = pd.MultiIndex.from_product(
            [[ast.literal_eval(p) for p in ps] for ps in entry["params"]])
        ci_a = entry.get("stats_ci_99_a") or [None] * len(combos)
        ci_b = entry.get("stats_ci_99_b") or [None] * len(combos)
        for (case, impl, *_), value, lo, hi in zip(combos, entry["result"] or [], ci_a, ci_b):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            rows.append(dict(machine=data["params"]["machine"], commit=data["commit_hash"],
                             date=data["date"], kernel=_kernel_of(parts[-2]), benchmark=name,
                             metric=metric, case=case, impl=impl, value=float(value),
                             ci_low=lo, ci_high=hi))
    return rows


def read_pytest_benchmark(paths) -> pd.DataFrame:
    """pytest-benchmark JSON files as the same long table (machine named from the device
    the harness recorded, as asv's machine names are)."""
    rows = []
    for path in paths:
        rows += _parsed(path, "a pytest-benchmark JSON file", _pytest_rows)
    return pd.DataFrame(rows)


def _pytest_rows(data) -> list[dict]:
    from .devices import sanitize

    rows = []
    commit = (data.get("commit_info") or {}).get("id") or ""
    date = pd.Timestamp(data.get("datetime", "1970-01-01")).value // 10**6
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "impl" not in info or not b.get("stats"):
            continue
        values = dict(time_s=b["stats"]["median"],
                      **{k: info.get(k) for k in METRICS.values() if k != "time_s"})
        for metric, value in values.items():
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                rows.append(dict(machine=sanitize(info["device"]), commit=commit, date=date,
                                 kernel=info["kernel"], benchmark=b["name"], metric=metric,
                                 case=info["case"], impl=info["impl"], value=float(value),
                                 ci_low=None, ci_high=None))
    return rows


def latest(long: pd.DataFrame) -> pd.DataFrame:
    """One row per machine, kernel, case and implementation, from the newest result of each
    metric, with the metrics as columns and speedups against the case's reference."""
    if long.empty:
        return pd.DataFrame(columns=["kernel"] + COLUMNS)
    long = long.sort_values("date").drop_duplicates(
        ["machine", "kernel", "case", "impl", "metric"], keep="last")
    wide = long.pivot_table(index=["machine", "kernel", "case", "impl"], columns="metric",
                            values="value", aggfunc="last").reset_index()
    meta = long.groupby(["machine", "kernel", "case", "impl"]).agg(
        commit=("commit", "last"), benchmark=("benchmark", "last")).reset_index()
    wide = wide.merge(meta, how="left")
    wide["source"] = np.where(wide.pop("benchmark").str.startswith("test_"),
                              "pytest-benchmark", "asv")
    for col in METRICS.values():
        if col not in wide:
            wide[col] = np.nan
    wide["time_ms"] = wide.time_s * 1e3
    wide["peak_mem_mb"] = wide.peak_mem_bytes / 2**20
    roles = {kernel: area.roles for kernel, area in areas().items()}
    wide["role"] = [roles.get(r.kernel, {}).get(r.impl) for r in wide.itertuples()]
    wide["median_ms"] = wide.time_ms
    speedups(wide, by=["machine", "kernel", "case"])
    wide = wide.drop(columns=["role", "median_ms", "vs_best_alt"])
    return wide


@lru_cache(maxsize=None)
def registry_cases() -> dict:
    """(kernel, case name) -> Case, for every case of the full sweep on either device."""
    return {(k, c.name): c for k in areas() for d in ("cpu", "cuda")
            for c in get_cases([k], d, "all")}


def case_params() -> dict:
    """(kernel, case name) -> parameters."""
    return {key: case.params for key, case in registry_cases().items()}


def _fmt(df: pd.DataFrame) -> str:
    cols = [c for c in COLUMNS if c in df and df[c].notna().any()]
    return df[cols].to_markdown(index=False, floatfmt=".3g")


def write_report(long: pd.DataFrame, out_dir) -> list[Path]:
    """Per kernel: <kernel>.md and <kernel>.csv, <kernel>-throughput.png (rate vs sequence
    length per implementation, one panel per machine and mode) and <kernel>-speedup.png
    (geometric-mean speedup over the reference per implementation and machine); README.md
    links them. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = latest(long)
    params = case_params()
    written, index = [], ["# Benchmark report", "",
                          "Generated by `kernelsuite report` from the asv results of every "
                          "machine (and any pytest-benchmark JSON given). Newest result per "
                          "machine, case and implementation. time_ms: median; frac_peak: "
                          "share of the device's peak (datasheet for known GPUs, measured "
                          "ceilings otherwise); vs_reference: the reference's time / this "
                          "time on the same machine; max_error: against the float64 "
                          "reference (attention) or elements differing from the exact "
                          "reference.", ""]
    for kernel, df in table.groupby("kernel"):
        df = df.sort_values(["machine", "case", "impl"])
        csv, md = out / f"{kernel}.csv", out / f"{kernel}.md"
        df.to_csv(csv, index=False)
        md.write_text(f"# {kernel}\n\n" + "\n\n".join(
            f"## {machine}\n\n{_fmt(g)}" for machine, g in df.groupby("machine")) + "\n")
        written += [csv, md]
        index.append(f"## {kernel}\n\n- [table]({md.name}) ([CSV]({csv.name}))")
        plots = [_throughput_plot(kernel, df, params, out), _speedup_plot(kernel, df, out)]
        for plot in filter(None, plots):
            written.append(plot)
            index.append(f"- ![{plot.stem}]({plot.name})")
        index.append("")
    readme = out / "README.md"
    readme.write_text("\n".join(index) + "\n")
    return written + [readme]


def _rate(df):
    for col, label in (("tflops", "TFLOP/s"), ("gbps", "GB/s"), ("mtok_s", "Mtok/s")):
        if col in df and df[col].notna().any():
            return col, label
    return None, None


def _throughput_plot(kernel, df, params, out):
    import matplotlib.pyplot as plt

    col, label = _rate(df)
    df = df.assign(seqlen=[params.get((kernel, c), {}).get(
        "seqlen", params.get((kernel, c), {}).get("seq_len")) for c in df.case],
        mode=[params.get((kernel, c), {}).get("mode", "") for c in df.case],
        causal=[params.get((kernel, c), {}).get("causal") for c in df.case])
    df = df[df.seqlen.notna() & df[col].notna()] if col else df.iloc[:0]
    if df.empty:
        return None
    panels = sorted({(m, mode) for m, mode in zip(df.machine, df["mode"])})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (machine, mode) in zip(axes[0], panels):
        sub = df[(df.machine == machine) & (df["mode"] == mode)]
        for (impl, causal), g in sub.groupby(["impl", sub.causal.astype(str)]):
            g = g.groupby("seqlen")[col].median().sort_index()
            style = "--" if causal == "True" else "-"
            ax.plot(g.index, g.values, style, marker="o",
                    label=impl + (" causal" if causal == "True" else ""))
        ax.set_xscale("log", base=2)
        ax.set_title(f"{machine} {mode}".strip(), fontsize=9)
        ax.set_xlabel("sequence length")
        ax.set_ylabel(label)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{kernel}: throughput vs sequence length")
    fig.tight_layout()
    path = out / f"{kernel}-throughput.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _speedup_plot(kernel, df, out):
    import matplotlib.pyplot as plt

    df = df[df.vs_reference.notna() & (df.vs_reference > 0)]
    if df.empty:
        return None
    geo = df.groupby(["machine", "impl"]).vs_reference.apply(
        geomean).unstack("impl")
    ax = geo.plot.bar(figsize=(1.5 + 1.5 * len(geo) + 0.3 * geo.size, 3.6), rot=0)
    ax.axhline(1, color="grey", lw=0.8)
    ax.set_ylabel("speedup over the reference (geomean)")
    ax.set_title(f"{kernel}: speedup per machine")
    ax.set_yscale("log")
    ax.figure.tight_layout()
    path = out / f"{kernel}-speedup.png"
    ax.figure.savefig(path, dpi=90)
    plt.close(ax.figure)
    return path


def regressions(long: pd.DataFrame, machine: str, base: str, head: str,
                factor: float = 1.2) -> pd.DataFrame:
    """Benchmarks whose head result is worse than base by more than `factor` (time, memory
    and error going up; rates going down) and, where both have asv's 99% confidence
    intervals, whose intervals do not overlap (asv compare's rule). Commits may be
    abbreviated. ValueError when there is nothing to compare: a commit that matches no
    commit of the machine (or several), or no benchmark in common; see check_factor.
    The result's attrs: compared (results in both), base_only, head_only (counts)."""
    check_factor(factor)
    mine = long[long.machine == machine]
    if mine.empty:
        raise ValueError(f"no asv results for machine {machine!r}; machines with results: "
                         f"{sorted(set(long.machine))}")
    commits = list(dict.fromkeys(mine.sort_values("date", ascending=False).commit))

    def pick(commit):
        matches = [c for c in commits if commit and c.startswith(commit)]
        if len(matches) != 1:
            shown = [c[:8] for c in commits[:10]] + (["..."] if len(commits) > 10 else [])
            raise ValueError(f"commit {commit!r} matches {len(matches) or 'none'} of the "
                             f"{len(commits)} commits with results on {machine!r} (newest "
                             f"first): {shown}")
        sel = mine[mine.commit == matches[0]].set_index(["benchmark", "case", "impl"])
        if sel.index.duplicated().any():  # e.g. results of two asv environments
            raise ValueError(f"commit {matches[0][:8]} has several results per benchmark on "
                             f"{machine!r}: compare needs one")
        return sel

    a, b = pick(base), pick(head)
    both = a.merge(b, left_index=True, right_index=True, suffixes=("_base", "_head"))
    if both.empty:
        raise ValueError(f"nothing to compare on {machine!r}: {base} ({len(a)} results, e.g. "
                         f"{a.index[0][0]}) and {head} ({len(b)}, e.g. {b.index[0][0]}) have "
                         "no benchmark, case and implementation in common")
    rows = []
    for key, r in both.iterrows():
        up = r.metric_base not in LARGER_IS_BETTER  # smaller is better
        old, new = r.value_base, r.value_head
        worse = (new > old * factor) if up else (new * factor < old)
        if up and old == 0:  # e.g. an error that was exactly 0
            worse = new > 0
        intervals = [r.ci_low_base, r.ci_high_base, r.ci_low_head, r.ci_high_head]
        if worse and all(x is not None and x == x for x in intervals):
            worse = (r.ci_low_head > r.ci_high_base) if up else (r.ci_high_head < r.ci_low_base)
        if worse:
            rows.append(dict(benchmark=key[0], case=key[1], impl=key[2], metric=r.metric_base,
                             base=old, head=new, ratio=new / old if old else math.inf))
    out = pd.DataFrame(rows, columns=["benchmark", "case", "impl", "metric", "base", "head",
                                      "ratio"])
    out.attrs.update(compared=len(both), base_only=len(a) - len(both),
                     head_only=len(b) - len(both))
    return out


def check_factor(factor: float) -> float:
    """How much worse counts as a regression: a finite number > 1 (1.2: 20% slower, or 20%
    less throughput). 1 or less would flag run-to-run noise, or improvements."""
    if not (math.isfinite(factor) and factor > 1):
        raise ValueError(f"factor must be a finite number > 1, got {factor!r}")
    return factor
