"""Attention: our kernels vs the reference vs every torch SDPA backend, per shape and mode
(fwd, bwd, fwd_bwd).

Groups are cases (one shape, dtype, mask and mode); compare the rows within a group.
extra_info carries TFLOP/s, GB/s, frac_peak, peak memory, max error against the float64
reference and, in the saved JSON, the speedups. GPU rounds are timed with CUDA events after
an L2 flush (bench_helpers).
"""

from bench_helpers import bench_case

KERNEL = "attention"


def test_attention(benchmark, case_impl, device):
    case, impl = case_impl
    bench_case(benchmark, case, impl, device)
