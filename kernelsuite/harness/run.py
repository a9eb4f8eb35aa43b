"""Run cases on the machine at hand and turn the timings into a table."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys

import pandas as pd

from .devices import copy_bandwidth, cuda_host_to_device_bandwidth, known_gpu, \
    measured_ceilings, peaks
from .measure import geomean, measure, speedups
from .registry import ALTERNATIVE


def show_progress(done: int, total: int, text: str, stream=None):
    """A progress bar on a terminal (redrawn in place), one line per step otherwise."""
    stream = stream or sys.stderr
    bar = "#" * (20 * done // max(total, 1))
    line = f"[{bar:<20}] {done}/{total} {text}"
    if stream.isatty():
        end = "\n" if done == total else ""
        stream.write(f"\r\033[K{line[:shutil.get_terminal_size().columns - 1]}{end}")
    else:
        stream.write(line + "\n")
    stream.flush()


def check_threads(text: str) -> int:
    """`bench --threads`: a positive int (ValueError naming the option otherwise)."""
    from .._checks import positive_int

    try:
        value = int(text)
    except ValueError:
        value = text
    return positive_int(value, "--threads")


@contextlib.contextmanager
def busy_core():
    """While open: a child process spinning on the last CPU this process may run on, as
    another job or a data-loader worker would; yields (that CPU, the child's pid). Timings taken
    inside show how an implementation copes with one slow thread: a fixed split of the work
    waits for it, a dynamic one gives it less."""
    cpu = max(os.sched_getaffinity(0))
    spin = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True:\n    pass\n"
    child = subprocess.Popen([sys.executable, "-c", spin])
    try:
        yield cpu, child.pid
    finally:
        child.kill()
        child.wait()


def run_cases(cases, device: str, impls=None, progress=True) -> pd.DataFrame:
    """Every (case, implementation) on device, plus speedups measured in the same run.
    impls: only these implementations; ValueError for a name no case has."""
    if impls is not None:
        known = {i for c in cases for i in c.impls}
        unknown = [i for i in dict.fromkeys(impls) if i not in known]
        if unknown:
            raise ValueError(f"unknown implementation(s) {unknown} for these cases on "
                             f"{device}; known: {sorted(known)}")
    jobs = [(c, i) for c in cases for i in c.impls if impls is None or i in impls]
    rows = []
    for n, (case, impl) in enumerate(jobs, 1):
        if progress and sys.stderr.isatty():  # what is running now
            show_progress(n - 1, len(jobs), f"{case.id} {impl} ...")
        row = measure(case, impl, device).row()
        rows.append(row)
        if progress:
            rate = (f"{row['tflops']:.2f} TFLOP/s" if case.flops
                    else f"{row['gbps']:.2f} GB/s" if case.bytes else "")
            show_progress(n, len(jobs), f"{case.id} {impl}: {row['median_ms']:.3f} ms {rate}")
    return speedups(pd.DataFrame(rows))


COLUMNS = ["case", "impl", "median_ms", "floor_ms", "RATE", "mtok_s", "frac_peak",
           "frac_ceiling", "vs_best_alt", "vs_reference", "peak_mem_mb", "max_error"]


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
    else:
        gpu = df.device.iloc[0]
        flops, bandwidth = peaks("cuda")
        mflops, mbandwidth = measured_ceilings("cuda")
        source = "datasheet" if known_gpu(gpu) else "measured"
        head += (f"; floor_ms = roofline floor at {flops / 1e12:.0f} TFLOP/s and "
                 f"{bandwidth / 1e12:.2f} TB/s ({source})")
        if (df.gflops == 0).any() and df.gbps.notna().any():
            head += (f", for data-movement cases at a device-to-device copy measured in this "
                     f"run ({copy_bandwidth('cuda') / 1e9:.0f} GB/s read + written)")
        if (df.kernel == "data").any():
            head += (", for loaders at a pinned host-to-device copy measured in this run "
                     f"({cuda_host_to_device_bandwidth('cuda') / 1e9:.1f} GB/s)")
        head += (f"; frac_peak = floor_ms / median_ms; frac_ceiling: the same at the ceilings "
                 f"measured in this run ({mflops / 1e12:.0f} TFLOP/s bf16 matmul, "
                 f"{mbandwidth / 1e12:.2f} TB/s device copy); see "
                 "bench/report/roofline-H200.md")
    if "max_error" in cols:
        head += ("; max_error = largest difference from the exact answer (attention: the "
                 "float64 reference on batch 0, head 0; loader, packing: elements that "
                 "differ from the reference; training: the loss's difference from eager "
                 "attention's in float64)")
    table = df[cols].to_markdown(index=False, floatfmt=".3g")
    return head + "\n\n" + table + "\n\n" + summary(df)


def summary(df: pd.DataFrame, by=("mode", "causal")) -> str:
    """Geometric mean of vs_best_alt per implementation over each group of cases (e.g.
    forward causal): the single ratio a sweep is judged by."""
    df = df[df.vs_best_alt.notna() & (df.role != ALTERNATIVE)]
    keys = [k for k in by if k in df]
    if df.empty:
        return ""
    groups = df.groupby(["impl"] + keys).vs_best_alt
    out = groups.apply(geomean).rename("geomean_vs_best_alt")
    count = groups.size().rename("cases")
    return pd.concat([out, count], axis=1).reset_index().to_markdown(index=False,
                                                                     floatfmt=".3g")
