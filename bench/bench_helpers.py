"""One pytest-benchmark measurement of a harness case, with its metrics in extra_info."""

import torch

from kernelsuite.harness.devices import device_name


def bench_case(benchmark, case, impl, device):
    inputs = case.make_inputs(device)
    work = case.impls[impl]
    cuda = torch.device(device).type == "cuda"

    def run():
        work(inputs)
        if cuda:  # the host clock must wait for the GPU
            torch.cuda.synchronize()

    benchmark.group = case.id
    benchmark.extra_info.update(case.params, impl=impl, device=device_name(device),
                                flops=case.flops, bytes=case.bytes,
                                threads=None if cuda else torch.get_num_threads())
    run()  # warm-up: autotuning and compilation stay out of the timings
    benchmark.pedantic(run, rounds=10 if not cuda else 50, warmup_rounds=2, iterations=1)
    if benchmark.stats:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        benchmark.extra_info["tflops"] = case.flops / median / 1e12
        benchmark.extra_info["gbps"] = case.bytes / median / 1e9
