"""Every kernel area of the harness registry, on CPU and on CUDA, as asv benchmarks:
suites.AttentionCPU.time_call, suites.PaddingCUDA.track_gbps, ... (see _harness.py).
Run the CPU classes with `asv run --bench 'CPU\\.'`, the GPU ones with `--bench 'CUDA\\.'`.
"""

from kernelsuite.harness.cases import area_names

from ._harness import suite

for _kernel in area_names():
    for _device in ("cpu", "cuda"):
        _cls = suite(_kernel, _device)
        if _cls is not None:
            globals()[_cls.__name__] = _cls
