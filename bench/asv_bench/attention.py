"""asv suite for attention, built from the harness registry (quick cases of this device).

time_run: seconds per call (synchronised on GPU). track_tflops: TFLOP/s from CUDA-event
timing with L2 flush (GPU) or perf_counter medians (CPU), the same method as
`kernelsuite bench`. A (case, impl) pair that does not exist on this device is skipped.
"""

from kernelsuite.harness import timing  # a bare time_* name would be taken for a benchmark

from ._harness import DEVICE, CaseSuite, registry

CASES, IMPLS = registry("attention")


class Attention(CaseSuite):
    CASES = CASES
    params = (list(CASES), IMPLS)

    def time_run(self, case, impl):
        self.run()

    def track_tflops(self, case, impl):
        return self.case.flops / timing.time_fn(self.fn, DEVICE).median_s / 1e12

    track_tflops.unit = "TFLOP/s"
