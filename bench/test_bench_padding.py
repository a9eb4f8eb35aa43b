"""pad/unpad (GPU only): Triton vs the reference gather/scatter, 64 x 2048 x 4096 bf16
with 30-70% padding. extra_info carries GB/s (bytes read + written)."""

from bench_helpers import bench_case

KERNEL = "padding"


def test_padding(benchmark, case_impl, device):
    case, impl = case_impl
    bench_case(benchmark, case, impl, device)
