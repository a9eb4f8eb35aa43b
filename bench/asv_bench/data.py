"""asv suite for data loading, built from the harness registry: TokenLoader, its
DataLoader reference and nanoGPT's get_batch over the benchmark's 1 GiB corpus.

time_fetch: seconds per call (BATCHES_PER_CALL batches). track_mtok_s: million tokens per
second; track_gbps: bytes read + written per second (perf_counter medians, as `kernelsuite
bench`).
"""

import torch

from kernelsuite.data.loader import stop_prefetch_threads
from kernelsuite.harness.cases import get_cases
from kernelsuite.harness import timing  # a bare time_* name would be taken for a benchmark

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = {c.name: c for c in get_cases(["data"], DEVICE, quick=True)}
IMPLS = sorted({impl for c in CASES.values() for impl in c.impls})


class Data:
    params = (list(CASES), IMPLS)
    param_names = ["case", "impl"]
    timeout = 600
    number = 1
    repeat = (3, 10, 20.0)

    def setup(self, case, impl):
        c = CASES[case]
        inputs, work = c.make_inputs(DEVICE), c.impls[impl]
        self.case = c
        self.fn = lambda: work(inputs)
        self.fn()  # warm-up: the loader, its thread and the Numba kernel start here

    def teardown(self, case, impl):
        # stop TokenLoader's prefetch thread before asv's forked runner exits: with the
        # thread still running, some runs ended in SIGABRT ("terminate called without an
        # active exception")
        stop_prefetch_threads()

    def time_fetch(self, case, impl):
        self.fn()

    def track_mtok_s(self, case, impl):
        return self.case.tokens / timing.time_fn(self.fn, DEVICE).median_s / 1e6

    track_mtok_s.unit = "Mtok/s"

    def track_gbps(self, case, impl):
        return self.case.bytes / timing.time_fn(self.fn, DEVICE).median_s / 1e9

    track_gbps.unit = "GB/s"
