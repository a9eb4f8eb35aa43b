"""Run cases on the machine at hand and turn the timings into a table."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch

from .cases import ALTERNATIVE_PREFIX, Case
from .devices import copy_bandwidth, device_name, peaks
from .timing import peak_cpu_bytes, peak_cuda_bytes, time_fn


def measure(case: Case, impl: str, device: str) -> dict:
    """Time one implementation of one case; returns a row of metrics."""
    inputs = case.make_inputs(device)
    work = case.impls[impl]

    def fn():
        return work(inputs)

    timing = time_fn(fn, device)
    row = dict(kernel=case.kernel, case=case.name, impl=impl, reference=case.reference,
               device=device_name(device),
               **case.params, median_ms=timing.median_s * 1e3, q20_ms=timing.q20_s * 1e3,
               q80_ms=timing.q80_s * 1e3, runs=timing.runs, threads=timing.threads,
               tflops=case.flops / timing.median_s / 1e12,
               gflops=case.flops / timing.median_s / 1e9,
               gbps=case.bytes / timing.median_s / 1e9 if case.bytes else None)
    if case.tokens:
        row["mtok_s"] = case.tokens / timing.median_s / 1e6
    # fraction of the roofline floor: max(FLOPs / peak FLOP/s, bytes / peak bandwidth); on
    # CPU the peaks are the measured float32 matmul rate and memcpy bandwidth. Cases that
    # only move data are measured against a copy on the same device, measured in this run.
    row["frac_peak"] = None
    if not case.flops and case.bytes:
        row["frac_peak"] = case.bytes / copy_bandwidth(device) / timing.median_s
    elif case.flops and (peak := peaks(device)):
        floor_s = max(case.flops / peak[0], case.bytes / peak[1] if peak[1] else 0.0)
        row["frac_peak"] = floor_s / timing.median_s
    cuda = torch.device(device).type == "cuda"
    peak_bytes = peak_cuda_bytes(fn) if cuda else peak_cpu_bytes(fn)
    row["peak_mem_mb"] = None if peak_bytes is None else peak_bytes / 2**20
    return row


def run_cases(cases, device: str, impls=None, progress=True) -> pd.DataFrame:
    """Every (case, implementation) on device, plus speedups measured in the same run."""
    jobs = [(c, i) for c in cases for i in c.impls if impls is None or i in impls]
    rows = []
    for n, (case, impl) in enumerate(jobs, 1):
        row = measure(case, impl, device)
        rows.append(row)
        if progress:
            rate = (f"{row['tflops']:.2f} TFLOP/s" if case.flops
                    else f"{row['gbps']:.2f} GB/s" if case.bytes else "")
            print(f"[{n}/{len(jobs)}] {case.id} {impl}: {row['median_ms']:.3f} ms {rate}",
                  file=sys.stderr, flush=True)
    return add_speedups(pd.DataFrame(rows))


def add_speedups(df: pd.DataFrame) -> pd.DataFrame:
    """vs_best_alt: time of the fastest alternative (e.g. best SDPA backend) / this time;
    vs_reference: time of the case's reference (impl "torch" unless the case names another)
    / this time. Both >1 means faster."""
    if df.empty:
        return df
    alt = df[df.impl.str.startswith(ALTERNATIVE_PREFIX)].groupby("case").median_ms.min()
    ref = df[df.impl == df.reference].set_index("case").median_ms
    df["vs_best_alt"] = df.case.map(alt) / df.median_ms
    df["vs_reference"] = df.case.map(ref) / df.median_ms
    return df


COLUMNS = ["case", "impl", "median_ms", "RATE", "mtok_s", "frac_peak", "vs_best_alt",
           "vs_reference", "peak_mem_mb"]


def format_table(df: pd.DataFrame) -> str:
    """A Markdown table naming the device (and CPU threads) it was measured on."""
    if df.empty:
        return "(no cases)"
    threads = df.threads.dropna().unique()
    # CPUs in GFLOP/s, GPUs in TFLOP/s, data movers in GB/s
    rate = "gbps" if not (df.gflops > 0).any() else "gflops" if len(threads) else "tflops"
    cols = [rate if c == "RATE" else c for c in COLUMNS]
    cols = [c for c in cols if c in df and df[c].notna().any()]
    devices = ", ".join(sorted(df.device.unique()))
    head = f"device: {devices}"
    if len(threads):
        flops, bandwidth = peaks("cpu")
        head += (f"; threads: {int(threads[0])} (torch and numba); frac_peak = share of the "
                 f"roofline floor from the float32 matmul rate ({flops / 1e9:.0f} GFLOP/s) "
                 f"and single-threaded memcpy ({bandwidth / 1e9:.1f} GB/s read + written) "
                 "measured on this machine; peak_mem_mb = resident-set growth during one "
                 "call")
    elif (df.gflops == 0).any() and df.gbps.notna().any():
        cuda = df[df.gflops == 0].device.iloc[0]
        head += (f"; frac_peak of data-movement cases = share of a device-to-device copy "
                 f"measured in this run ({copy_bandwidth('cuda') / 1e9:.0f} GB/s read + "
                 f"written on {cuda})")
    table = df[cols].to_markdown(index=False, floatfmt=".3g")
    return head + "\n\n" + table + "\n\n" + summary(df)


def summary(df: pd.DataFrame, by=("mode", "causal")) -> str:
    """Geometric mean of vs_best_alt per implementation over each group of cases (e.g.
    forward causal): the single ratio a sweep is judged by."""
    df = df[df.vs_best_alt.notna() & ~df.impl.str.startswith(ALTERNATIVE_PREFIX)]
    keys = [k for k in by if k in df]
    if df.empty:
        return ""
    groups = df.groupby(["impl"] + keys).vs_best_alt
    out = groups.apply(lambda r: float(np.exp(np.log(r).mean()))).rename("geomean_vs_best_alt")
    count = groups.size().rename("cases")
    return pd.concat([out, count], axis=1).reset_index().to_markdown(index=False,
                                                                     floatfmt=".3g")
