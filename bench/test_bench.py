"""pytest-benchmark over every case of every area: `pytest bench/ --benchmark-only
[--bench-all] [-k attention]`.

Each test is one (case, implementation), named `test_bench[<area>/<case>-<impl>]`; groups
are cases, so each group compares implementations side by side (what each area measures:
the module docstrings of kernelsuite/harness/cases/). The call, its checked warm-up, peak
memory and the rates are kernelsuite.harness.measure's; pytest-benchmark owns the rounds
and statistics. CPU: perf_counter around each call, torch's thread count recorded. CUDA:
the timer reads CUDA events (timing.cuda_clock: the time the GPU spent from the start to
the end of the call's work) and the L2 cache is flushed before every round, outside the
timing. extra_info carries the case's parameters, TFLOP/s or GB/s, frac_peak, peak
memory, max error and, in the saved JSON, the speedups (conftest.py).
"""

import torch

from kernelsuite.harness.measure import Call, rates
from kernelsuite.harness.timing import cuda_clock, flush_l2


def test_bench(benchmark, case_impl, device):
    case, impl = case_impl
    benchmark.group = case.id
    call = Call(case, impl, device)
    benchmark.extra_info.update(call.info(), flops=case.flops, bytes=case.bytes,
                                threads=None if call.cuda else torch.get_num_threads(),
                                peak_mem_bytes=call.peak_bytes())
    if call.cuda:
        benchmark._timer = cuda_clock  # pytest-benchmark has no public per-test timer
        benchmark.pedantic(call, setup=flush_l2, rounds=50, warmup_rounds=2, iterations=1)
    else:
        benchmark.pedantic(call, rounds=10, warmup_rounds=2, iterations=1)
    if benchmark.stats:  # None under --benchmark-disable
        metrics = rates(case, benchmark.stats.stats.median, device)
        benchmark.extra_info.update({k: v for k, v in metrics.items() if k != "gflops"})
