"""One pytest-benchmark measurement of a harness case, with its metrics in extra_info.

CPU: perf_counter around each call (pytest-benchmark's own timer), torch's thread count
recorded. CUDA: the timer reads CUDA events (timing.cuda_clock: the time the GPU spent
from the start to the end of the call's work) and the L2 cache is flushed before every
round, outside the timing. The first call is a warm-up and is checked against the case's
truth (max_error); one more call measures peak memory. Rates come from the median.
"""

import torch

from kernelsuite.harness.devices import device_name
from kernelsuite.harness.run import check_error, peak_bytes, rates
from kernelsuite.harness.timing import cuda_clock, flush_l2


def bench_case(benchmark, case, impl, device):
    inputs = case.make_inputs(device)
    work = case.impls[impl]
    cuda = torch.device(device).type == "cuda"

    def run():
        return work(inputs)

    benchmark.group = case.id
    # warm-up (autotuning, compilation, loader start-up stay out of the timings), checked
    error = check_error(case, impl, inputs, run())
    peak = peak_bytes(run, device)
    benchmark.extra_info.update(case.params, kernel=case.kernel, case=case.name, impl=impl,
                                reference=case.reference, device=device_name(device),
                                flops=case.flops, bytes=case.bytes,
                                threads=None if cuda else torch.get_num_threads(),
                                max_error=error, peak_mem_bytes=peak)
    if cuda:
        benchmark._timer = cuda_clock  # pytest-benchmark has no public per-test timer
        benchmark.pedantic(run, setup=flush_l2, rounds=50, warmup_rounds=2, iterations=1)
    else:
        benchmark.pedantic(run, rounds=10, warmup_rounds=2, iterations=1)
    if benchmark.stats:  # None under --benchmark-disable
        metrics = rates(case, benchmark.stats.stats.median, device)
        benchmark.extra_info.update({k: v for k, v in metrics.items() if k != "gflops"})
