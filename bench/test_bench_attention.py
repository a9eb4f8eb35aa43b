"""Attention: our kernels vs the reference vs every torch SDPA backend, per shape.

Groups are cases (one shape, dtype, mask and mode); compare the rows within a group.
extra_info carries TFLOP/s and GB/s. GPU timings here are host-clocked around a
synchronised call; `kernelsuite bench` times with CUDA events and an L2 flush.
"""

from bench_helpers import bench_case

KERNEL = "attention"


def test_attention(benchmark, case_impl, device):
    case, impl = case_impl
    bench_case(benchmark, case, impl, device)
