"""asv suites for batching, built from the harness registry.

Packing: seconds per pack_sequences call on 1,000,000 lengths (Numba vs the Python
reference); track_bins: the bins the packing needs (a change here is a behaviour change).
Padding (only where CUDA is): time_run and track_gbps (bytes read + written per second).
"""

from kernelsuite.harness import timing  # a bare time_* name would be taken for a benchmark

from ._harness import DEVICE, CaseSuite, registry

PACK_CASES, PACK_IMPLS = registry("packing")
PAD_CASES, PAD_IMPLS = registry("padding")


class Packing(CaseSuite):
    CASES = PACK_CASES
    params = (list(PACK_CASES), PACK_IMPLS)

    def time_pack(self, case, impl):
        self.run()

    def track_bins(self, case, impl):
        return self.fn().num_bins

    track_bins.unit = "bins"


if PAD_CASES:  # the Triton kernels are timed on CUDA only
    class Padding(CaseSuite):
        CASES = PAD_CASES
        params = (list(PAD_CASES), PAD_IMPLS)

        def time_run(self, case, impl):
            self.run()

        def track_gbps(self, case, impl):
            return self.case.bytes / timing.time_fn(self.fn, DEVICE).median_s / 1e9

        track_gbps.unit = "GB/s"
