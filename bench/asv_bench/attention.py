"""asv suite for attention, built from the harness registry (quick cases of this device).

time_run: seconds per call (synchronised on GPU). track_tflops: TFLOP/s from CUDA-event
timing with L2 flush (GPU) or perf_counter medians (CPU), the same method as
`kernelsuite bench`. A (case, impl) pair that does not exist on this device is skipped.
"""

import torch

from kernelsuite.harness.cases import get_cases
from kernelsuite.harness import timing  # a bare time_* name would be taken for a benchmark

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = {c.name: c for c in get_cases(["attention"], DEVICE, quick=True)}
IMPLS = sorted({impl for c in CASES.values() for impl in c.impls})


class Attention:
    params = (list(CASES), IMPLS)
    param_names = ["case", "impl"]
    timeout = 600
    number = 1  # calls take 10 ms to 1 s: one per sample
    repeat = (3, 10, 20.0)

    def setup(self, case, impl):
        c = CASES[case]
        if impl not in c.impls:
            raise NotImplementedError(f"{impl} does not run {case} on {DEVICE}")
        inputs, work = c.make_inputs(DEVICE), c.impls[impl]
        self.case = c
        self.fn = lambda: work(inputs)
        self.run()  # warm-up: autotuning and compilation stay out of the timings

    def run(self):
        self.fn()
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    def time_run(self, case, impl):
        self.run()

    def track_tflops(self, case, impl):
        return self.case.flops / timing.time_fn(self.fn, DEVICE).median_s / 1e12

    track_tflops.unit = "TFLOP/s"
