"""asv suites built from the harness registry: one class per kernel area and device type.

Parameters: the area's quick cases for that device type (names) x every implementation
the area declares there, so discovery lists the same benchmarks on every machine; a pair
that does not run here is skipped (NotImplementedError in setup). asv's default launch
method spawns a fresh process for every benchmark and parameter pair, so each peak-memory
reading starts clean. Each benchmark has an explicit version: refactoring this file does
not cut the dashboard's history; bump a version when what it measures changes. The
call, its checked warm-up and the measurement the tracks read are
kernelsuite.harness.measure's; asv owns time_call's samples and statistics.
"""

import torch
from asv_runner.benchmarks.mark import SkipNotImplemented

from kernelsuite.harness.cases import get_cases, implementation_names, teardown
from kernelsuite.harness.measure import Call


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
        self.call = Call(c, impl, self.DEVICE)  # warm-up (compilation, autotuning), checked
        self.result = None

    def teardown(self, case, impl):
        teardown(self.CASES[case].kernel)

    def measured(self):
        """The measurement the tracks read (kernelsuite.harness.measure: CUDA events with an
        L2 flush, or perf_counter medians, as `kernelsuite bench`), made once per process."""
        if self.result is None:
            self.result = self.call.result()
        return self.result


def _time_call(self, case, impl):
    self.call.synced()


def _rate(name):
    """A track reading one rate of the process's measurement (measure.rates)."""
    def track(self, case, impl):
        return self.measured().rates()[name]
    return track


_track_tflops, _track_gbps, _track_mtok_s, _track_frac_peak = (
    _rate(name) for name in ("tflops", "gbps", "mtok_s", "frac_peak"))


def _track_peak_memory(self, case, impl):
    """Bytes allocated at the peak of one call beyond what was allocated before it (GPU),
    or resident-set growth (CPU)."""
    return self.call.peak_bytes()


def _track_max_error(self, case, impl):
    """The warm-up call's output against the case's truth (kernelsuite.harness.measure)."""
    if self.call.max_error is None:
        raise SkipNotImplemented(f"{impl} has no answer to check")
    return self.call.max_error


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
