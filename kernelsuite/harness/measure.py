"""The one place a case's call is measured (docs/ARCHITECTURE.md, "Benchmarks").

`Call(case, impl, device)` makes the inputs, runs the implementation once (the warm-up:
compilation, autotuning and loader start-up stay out of every timing) and checks that
output against the case's truth. `Call.result()` then times it (timing.time_fn: CUDA
events after an L2 flush on a GPU, perf_counter medians on a CPU), measures the peak
memory of one more call and returns a `Result`: median, spread, runs, threads, peak
memory, max error and the rates derived from them. `measure(case, impl, device)` does
both. The front ends share this and keep their own statistics and storage:
`kernelsuite bench` (run.py) uses Result as it is, pytest-benchmark (bench/test_bench.py)
times a Call with its own rounds and timer and hands its median to `Call.result`, asv
(bench/asv_bench/_harness.py) times a Call with its own repeats and reads its tracks from
one Result, and the profiler samples a Call. `speedups` turns a table of medians into the
ratios against each case's reference and fastest alternative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .devices import (copy_bandwidth, cuda_host_to_device_bandwidth, device_name,
                      measured_ceilings, peaks)
from .registry import ALTERNATIVE, REFERENCE, Case
from .roofline import floor_seconds
from .timing import Timing, peak_cpu_bytes, peak_cuda_bytes, time_fn


class Call:
    """One implementation of one case on a device, ready to run: inputs made, warmed up
    and (check=True) the warm-up's output checked (max_error; None where nothing is
    checked). Calling it runs the implementation once; synced() also waits for the GPU."""

    def __init__(self, case: Case, impl: str, device: str, check: bool = True):
        check_impl(case, impl, device)
        self.case, self.impl, self.device = case, impl, device
        self.cuda = torch.device(device).type == "cuda"
        self.inputs = case.make_inputs(device)
        self._work = case.impls[impl]
        first = self.synced()
        self.max_error = check_error(case, impl, self.inputs, first) if check else None

    def __call__(self):
        return self._work(self.inputs)

    def synced(self):
        out = self()
        if self.cuda:  # a host clock must wait for the GPU
            torch.cuda.synchronize()
        return out

    def peak_bytes(self) -> int | None:
        """Peak memory of one call: GPU allocations on CUDA, resident-set growth on CPU."""
        return peak_cuda_bytes(self) if self.cuda else peak_cpu_bytes(self)

    def info(self) -> dict:
        """What names the measurement (case, parameters, implementation and its role,
        device) and what the warm-up found (max_error, the case's details)."""
        c = self.case
        details = c.details(self.inputs) if c.details else {}
        return dict(kernel=c.kernel, case=c.name, impl=self.impl, role=c.role(self.impl),
                    reference=c.reference, device=device_name(self.device), **c.params,
                    **details, max_error=self.max_error)

    def result(self, timing: Timing | None = None) -> Result:
        """The measurement: timing (default: timed here) and the peak memory of one call."""
        timing = timing or time_fn(self, self.device)
        return Result(self.case, self.impl, self.device, timing, self.peak_bytes(),
                      self.info())


def check_impl(case: Case, impl: str, device: str) -> str:
    """impl, if the case has it on this device; ValueError listing the ones it has."""
    if impl not in case.impls:
        raise ValueError(f"impl {impl!r} does not run {case.id} on {device}; choose from "
                         f"{list(case.impls)}")
    return impl


def check_error(case: Case, impl: str, inputs, output) -> float | None:
    """Max error of an output against the case's truth for the same inputs (None where the
    case or implementation has nothing to check against)."""
    if case.truth is None or impl in case.unchecked:
        return None
    return float(case.error(output, case.truth(inputs)))


def measure(case: Case, impl: str, device: str) -> Result:
    """Time one implementation of one case (warm-up checked, see Call)."""
    return Call(case, impl, device).result()


@dataclass(frozen=True)
class Result:
    case: Case
    impl: str
    device: str
    timing: Timing
    peak_bytes: int | None
    info: dict  # Call.info(): names the measurement, holds max_error and details

    def rates(self, with_ceiling: bool = False) -> dict:
        """Throughput at the median: see rates()."""
        return rates(self.case, self.timing.median_s, self.device, with_ceiling)

    def row(self) -> dict:
        """A row of `kernelsuite bench`'s table."""
        t = self.timing
        return dict(self.info, median_ms=t.median_s * 1e3, q20_ms=t.q20_s * 1e3,
                    q80_ms=t.q80_s * 1e3, runs=t.runs, threads=t.threads,
                    **self.rates(with_ceiling=True),
                    peak_mem_mb=None if self.peak_bytes is None else self.peak_bytes / 2**20)


def rates(case: Case, median_s: float, device: str, with_ceiling: bool = False) -> dict:
    """Throughput of one call taking median_s: TFLOP/s, GFLOP/s, GB/s, Mtok/s, floor_ms
    (the roofline floor at the device's peaks, see ceilings()) and frac_peak = floor / time.
    with_ceiling (GPUs): also frac_ceiling, the floor at the ceilings measured in this
    process (bf16 matmul, device copy) over the time."""
    out = dict(tflops=case.flops / median_s / 1e12, gflops=case.flops / median_s / 1e9,
               gbps=case.bytes / median_s / 1e9 if case.bytes else None, frac_peak=None)
    if case.tokens:
        out["mtok_s"] = case.tokens / median_s / 1e6
    if not (case.flops or case.bytes):
        return out
    floor, _ = floor_seconds(case, *ceilings(case, device))
    out.update(floor_ms=floor * 1e3, frac_peak=floor / median_s)
    if with_ceiling and torch.device(device).type == "cuda":
        out["frac_ceiling"] = floor_seconds(case, *ceilings(case, device, True))[0] / median_s
    return out


def ceilings(case: Case, device: str, measured: bool = False) -> tuple:
    """(FLOP/s, memory bytes/s, host-link bytes/s or None) a case's floor is taken at:
    devices.peaks (datasheet for H100/H200, measured elsewhere), except that cases that
    only move data are held to a device copy measured in this run, and cases that feed a
    GPU from the host to a pinned host-to-device copy measured in this run. measured:
    every rate measured here (devices.measured_ceilings)."""
    flops, bandwidth = measured_ceilings(device) if measured else peaks(device)
    if not case.flops:
        bandwidth = copy_bandwidth(device)
    cuda = torch.device(device).type == "cuda"
    link = cuda_host_to_device_bandwidth(str(torch.device(device))) \
        if cuda and case.host_bytes else None
    return flops, bandwidth, link


def speedups(df: pd.DataFrame, by=("case",)) -> pd.DataFrame:
    """Adds to a table of measurements (columns: the `by` keys naming a case, impl, role,
    median_ms) vs_reference = the time of the case's reference / this time and
    vs_best_alt = the time of its fastest alternative / this time; both > 1 means faster.
    Each ratio is taken within one table: medians measured side by side."""
    if df.empty:
        return df
    by = list(by)
    ref = df[df.role == REFERENCE].groupby(by).median_ms.min().rename("ref_ms")
    alt = df[df.role == ALTERNATIVE].groupby(by).median_ms.min().rename("alt_ms")
    out = df.join(ref, on=by).join(alt, on=by)
    df["vs_reference"] = (out.ref_ms / out.median_ms).to_numpy(dtype=float)
    df["vs_best_alt"] = (out.alt_ms / out.median_ms).to_numpy(dtype=float)
    return df


def geomean(values) -> float:
    return float(np.exp(np.log(np.asarray(values, dtype=float)).mean()))
