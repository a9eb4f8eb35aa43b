"""Timing and memory measurement (DESIGN.md, "Benchmark method").

GPU: CUDA events around the call, warm-up first, L2 flushed before every run, median of
many (triton.testing.do_bench when triton is there). CPU: perf_counter medians after
warm-up, with torch's thread count recorded.
"""

from __future__ import annotations

import ctypes
import re
import statistics
import time
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    median_s: float
    q20_s: float  # 20th and 80th percentiles: the spread
    q80_s: float
    runs: int
    threads: int | None = None  # CPU: torch.get_num_threads() during the runs


def _quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def time_cuda(fn, warmup_ms: float = 25, rep_ms: float = 200) -> Timing:
    """Median of CUDA-event timings, with the L2 cache flushed before each run."""
    try:
        from triton.testing import do_bench
    except ImportError:  # no triton: the same method by hand
        return _time_cuda_events(fn, warmup_ms, rep_ms)
    q20, med, q80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.2, 0.5, 0.8])
    runs = max(1, int(rep_ms / max(med, 1e-3)))
    return Timing(med / 1e3, q20 / 1e3, q80 / 1e3, runs)


_CUDA = {}


def flush_l2():
    """Overwrite a buffer larger than any GPU's L2 cache (256 MiB), so the next call starts
    cold, as do_bench does between runs."""
    if "flush" not in _CUDA:
        _CUDA["flush"] = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    _CUDA["flush"].zero_()


def cuda_clock() -> float:
    """Seconds on the GPU's clock, for pytest-benchmark's timer: records a CUDA event on the
    current stream, waits for it, and returns its time since the first such event. Two
    readings around a call measure the GPU time from the first to the last of its work."""
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    event.synchronize()
    base = _CUDA.setdefault("clock", event)
    return base.elapsed_time(event) / 1e3


def _time_cuda_events(fn, warmup_ms, rep_ms):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def once() -> float:  # seconds of one call on the GPU's clock
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3

    fn()
    torch.cuda.synchronize()
    est_ms = max(once() * 1e3, 1e-3)
    for _ in range(max(1, int(warmup_ms / est_ms))):
        fn()
    times = []
    for _ in range(max(5, int(rep_ms / est_ms))):
        flush_l2()
        times.append(once())
    return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8),
                  len(times))


def time_cpu(fn, warmup: int = 2, min_runs: int = 5, min_time_s: float = 0.5) -> Timing:
    """Median wall time of fn() after warm-up; runs until min_runs and min_time_s are met."""
    for _ in range(warmup):
        fn()
    times = []
    total = 0.0
    while len(times) < min_runs or total < min_time_s:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
    return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8),
                  len(times), threads=torch.get_num_threads())


def time_fn(fn, device: str) -> Timing:
    return time_cuda(fn) if torch.device(device).type == "cuda" else time_cpu(fn)


def peak_cuda_bytes(fn) -> int:
    """Peak GPU memory allocated during one call, above what was allocated before it."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _status_kb(field):
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1))


def peak_cpu_bytes(fn) -> int | None:
    """Growth of the resident set during one call (Linux: the high-water mark is reset
    through /proc/self/clear_refs). Free heap memory is returned to the OS first
    (malloc_trim), so allocations the call makes show up even when they reuse the heap.
    None where the kernel does not offer this."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kb("VmRSS")
        fn()
        return max(0, _status_kb("VmHWM") - before) * 1024
    except (OSError, AttributeError):
        return None
