"""Packing: each algorithm's Numba kernel vs its plain-Python reference on 1,000,000
lengths (gamma and a long-tailed mix; capacity 2048 and 8192). Groups are cases;
extra_info carries the packing's bins and efficiency."""

from bench_helpers import bench_case

from kernelsuite.batching import pack_sequences

KERNEL = "packing"


def test_packing(benchmark, case_impl, device):
    case, impl = case_impl
    bench_case(benchmark, case, impl, device)
    p = pack_sequences(case.make_inputs(device), case.params["capacity"],
                       case.params["algorithm"])
    benchmark.extra_info.update(bins=p.num_bins, min_bins=p.min_bins,
                                efficiency=p.efficiency)
