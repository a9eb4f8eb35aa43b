"""Run cases on the machine at hand and turn the timings into a table."""

from __future__ import annotations

import sys

import pandas as pd
import torch

from .cases import ALTERNATIVE_PREFIX, Case
from .devices import device_name, peaks
from .timing import peak_cuda_bytes, time_fn


def measure(case: Case, impl: str, device: str) -> dict:
    """Time one implementation of one case; returns a row of metrics."""
    inputs = case.make_inputs(device)
    work = case.impls[impl]

    def fn():
        return work(inputs)

    timing = time_fn(fn, device)
    row = dict(kernel=case.kernel, case=case.name, impl=impl, device=device_name(device),
               **case.params, median_ms=timing.median_s * 1e3, q20_ms=timing.q20_s * 1e3,
               q80_ms=timing.q80_s * 1e3, runs=timing.runs, threads=timing.threads,
               tflops=case.flops / timing.median_s / 1e12,
               gbps=case.bytes / timing.median_s / 1e9)
    peak = peaks(device)
    # fraction of the roofline floor: max(FLOPs / peak FLOP/s, bytes / peak bandwidth)
    row["frac_peak"] = (max(case.flops / peak[0], case.bytes / peak[1]) / timing.median_s
                        if peak else None)
    row["peak_mem_mb"] = (peak_cuda_bytes(fn) / 2**20
                          if torch.device(device).type == "cuda" else None)
    return row


def run_cases(cases, device: str, impls=None, progress=True) -> pd.DataFrame:
    """Every (case, implementation) on device, plus speedups measured in the same run."""
    jobs = [(c, i) for c in cases for i in c.impls if impls is None or i in impls]
    rows = []
    for n, (case, impl) in enumerate(jobs, 1):
        row = measure(case, impl, device)
        rows.append(row)
        if progress:
            print(f"[{n}/{len(jobs)}] {case.id} {impl}: {row['median_ms']:.3f} ms "
                  f"{row['tflops']:.2f} TFLOP/s", file=sys.stderr, flush=True)
    return add_speedups(pd.DataFrame(rows))


def add_speedups(df: pd.DataFrame) -> pd.DataFrame:
    """vs_best_alt: time of the fastest alternative (e.g. best SDPA backend) / this time;
    vs_reference: time of the reference / this time. Both >1 means faster."""
    if df.empty:
        return df
    alt = df[df.impl.str.startswith(ALTERNATIVE_PREFIX)].groupby("case").median_ms.min()
    ref = df[df.impl == "torch"].set_index("case").median_ms
    df["vs_best_alt"] = df.case.map(alt) / df.median_ms
    df["vs_reference"] = df.case.map(ref) / df.median_ms
    return df


COLUMNS = ["case", "impl", "median_ms", "tflops", "frac_peak", "vs_best_alt", "vs_reference",
           "peak_mem_mb"]


def format_table(df: pd.DataFrame) -> str:
    """A Markdown table naming the device (and CPU threads) it was measured on."""
    if df.empty:
        return "(no cases)"
    cols = [c for c in COLUMNS if c in df and df[c].notna().any()]
    devices = ", ".join(sorted(df.device.unique()))
    threads = df.threads.dropna().unique()
    head = f"device: {devices}" + (f"; torch threads: {int(threads[0])}" if len(threads) else "")
    return head + "\n\n" + df[cols].to_markdown(index=False, floatfmt=".3g")
