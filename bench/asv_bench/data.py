"""asv suite for data loading, built from the harness registry: TokenLoader, its
DataLoader reference and nanoGPT's get_batch over the benchmark's 1 GiB corpus.

time_fetch: seconds per call (BATCHES_PER_CALL batches; synchronised on GPU).
track_mtok_s: million tokens per second; track_gbps: bytes read + written per second
(perf_counter medians, as `kernelsuite bench`).
"""

from kernelsuite.data.loader import stop_prefetch_threads
from kernelsuite.harness import timing  # a bare time_* name would be taken for a benchmark

from ._harness import DEVICE, CaseSuite, registry

CASES, IMPLS = registry("data")


class Data(CaseSuite):
    CASES = CASES
    params = (list(CASES), IMPLS)

    def teardown(self, case, impl):
        # stop TokenLoader's prefetch thread before asv's forked runner exits: with the
        # thread still running, some runs ended in SIGABRT ("terminate called without an
        # active exception")
        stop_prefetch_threads()

    def time_fetch(self, case, impl):
        self.run()

    def track_mtok_s(self, case, impl):
        return self.case.tokens / timing.time_fn(self.fn, DEVICE).median_s / 1e6

    track_mtok_s.unit = "Mtok/s"

    def track_gbps(self, case, impl):
        return self.case.bytes / timing.time_fn(self.fn, DEVICE).median_s / 1e9

    track_gbps.unit = "GB/s"
