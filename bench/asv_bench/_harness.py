"""asv suites built from the harness registry: one class per kernel area and device type.

Parameters: the area's quick cases for that device type (names) x every implementation
the area declares there, so discovery lists the same benchmarks on every machine; a pair
that does not run here is skipped (NotImplementedError in setup). asv's default launch
method spawns a fresh process for every benchmark and parameter pair, so each peak-memory
reading starts clean. Each benchmark has an explicit version: refactoring this file does
not cut the dashboard's history; bump a version when what it measures changes.
"""

import torch
from asv_runner.benchmarks.mark import SkipNotImplemented

from kernelsuite.data.loader import stop_prefetch_threads
from kernelsuite.harness import timing  # a bare time_* name would be taken for a benchmark
from kernelsuite.harness.cases import get_cases, implementation_names
from kernelsuite.harness.run import check_error, peak_bytes, rates


class CaseSuite:
    DEVICE = "cpu"
    CASES: dict = {}
    param_names = ["case", "impl"]
    timeout = 600
    number = 1  # calls take milliseconds to a second: one per sample
    repeat = (3, 10, 20.0)

    def setup(self, case, impl):
        if self.DEVICE == "cuda" and not torch.cuda.is_available():
            raise NotImplementedError("no CUDA GPU on this machine")
        c = self.CASES[case]
        if impl not in c.impls:
            raise NotImplementedError(f"{impl} does not run {case} here")
        self.case, self.impl = c, impl
        self.inputs = c.make_inputs(self.DEVICE)
        self.first = self.run()  # warm-up: compilation, autotuning, loader start-up

    def teardown(self, case, impl):
        # a TokenLoader's prefetch thread must stop before the process exits (SIGABRT)
        stop_prefetch_threads()

    def fn(self):
        return self.case.impls[self.impl](self.inputs)

    def run(self):
        out = self.fn()
        if self.DEVICE == "cuda":  # the host clock must wait for the GPU
            torch.cuda.synchronize()
        return out

    def median_s(self):
        """CUDA events with L2 flush, or perf_counter medians: as `kernelsuite bench`."""
        return timing.time_fn(self.fn, self.DEVICE).median_s


def _time_call(self, case, impl):
    self.run()


def _track_tflops(self, case, impl):
    return self.case.flops / self.median_s() / 1e12


def _track_gbps(self, case, impl):
    return self.case.bytes / self.median_s() / 1e9


def _track_mtok_s(self, case, impl):
    return self.case.tokens / self.median_s() / 1e6


def _track_frac_peak(self, case, impl):
    return rates(self.case, self.median_s(), self.DEVICE)["frac_peak"]


def _track_peak_memory(self, case, impl):
    """Bytes allocated at the peak of one call beyond what was allocated before it (GPU),
    or resident-set growth (CPU)."""
    return peak_bytes(self.fn, self.DEVICE)


def _track_max_error(self, case, impl):
    """The warm-up call's output against the case's truth (kernelsuite.harness.run)."""
    error = check_error(self.case, impl, self.inputs, self.first)
    if error is None:
        raise SkipNotImplemented(f"{impl} has no answer to check")
    return error


# module-level names start with "_": asv would take a bare time_*/track_* for a benchmark
for _fn, _unit in [(_time_call, "seconds"), (_track_tflops, "TFLOP/s"), (_track_gbps, "GB/s"),
                   (_track_mtok_s, "Mtok/s"), (_track_frac_peak, "fraction"),
                   (_track_peak_memory, "bytes"), (_track_max_error, "error")]:
    _fn.version = "1"
    if _fn is not _time_call:
        _fn.unit = _unit


def suite(kernel, device):
    """The asv class for a kernel area on a device type, or None when it has no cases."""
    cases = {c.name: c for c in get_cases([kernel], device, "quick")}
    if not cases:
        return None
    one = next(iter(cases.values()))
    attrs = dict(DEVICE=device, CASES=cases,
                 params=(list(cases), implementation_names(kernel, device)),
                 time_call=_time_call, track_peak_memory=_track_peak_memory)
    # the rates that mean something for the area: compute (TFLOP/s) or data (GB/s, tokens)
    if one.flops:
        attrs.update(track_tflops=_track_tflops, track_frac_peak=_track_frac_peak)
    elif one.bytes:
        attrs.update(track_gbps=_track_gbps, track_frac_peak=_track_frac_peak)
    if one.tokens:
        attrs["track_mtok_s"] = _track_mtok_s
    if one.truth is not None:
        attrs["track_max_error"] = _track_max_error
    name = kernel.title() + device.upper()
    return type(name, (CaseSuite,), attrs)
