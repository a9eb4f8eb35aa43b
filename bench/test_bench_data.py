"""Data loading: TokenLoader vs its DataLoader reference vs nanoGPT's get_batch.

Groups are batch shapes; each timed call fetches BATCHES_PER_CALL batches from a 1 GiB
corpus the harness writes on first use (kept in $KERNELSUITE_BENCH_DATA or the temp dir).
extra_info carries GB/s (bytes read + written), Mtok/s and the tokens that differ from
the reference's batch (max_error; nanoGPT's random batches are not compared).
"""

from bench_helpers import bench_case

KERNEL = "data"


def test_data(benchmark, case_impl, device):
    case, impl = case_impl
    bench_case(benchmark, case, impl, device)
