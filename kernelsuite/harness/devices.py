"""Which machine a figure came from, and its peaks (to turn rates into fractions)."""

from __future__ import annotations

import platform
import re
from functools import lru_cache

import torch

# name fragment -> (dense 16-bit tensor FLOP/s, memory bytes/s), from the datasheets
# (DESIGN.md)
PEAKS = {
    "H100": (989e12, 3.35e12),
    "H200": (989e12, 4.8e12),
}
# name fragment -> (bf16 matmul FLOP/s, device-copy bytes/s read + written) measured on such
# machines (DESIGN.md; the device tool's notes: 769-798 TFLOP/s, 4.3 TB/s on an H200): what
# a kernel can reach in practice, before a run measures its own
MEASURED = {
    "H100": (790e12, 3.0e12),
    "H200": (790e12, 4.3e12),
}
# host-to-device bytes/s of the GPUs above: PCIe 5.0 x16, one direction (datasheet)
HOST_LINK = 64e9


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return cpu_name()


def machine_name(device: str) -> str:
    """The asv machine name for results measured on device: the GPU model for CUDA, the CPU
    model otherwise, with runs of anything but letters, digits, '.' and '_' made one '-'
    (e.g. "NVIDIA-H100-80GB-HBM3", "AMD-EPYC"), so that each device has its own series."""
    return sanitize(device_name(device))


def sanitize(name: str) -> str:
    """A device name as a machine name (see machine_name)."""
    name = re.sub(r"\(R\)|\(TM\)|\bCPU\b|@.*$", "", name)
    return re.sub(r"[^A-Za-z0-9._]+", "-", name).strip("-") or "unknown"


@lru_cache(maxsize=None)
def cuda_matmul_flops(device: str = "cuda") -> float:
    """bfloat16 FLOP/s of an 8192^3 torch matmul on this GPU: the ceiling used for GPUs
    that are not in PEAKS."""
    from .timing import time_cuda

    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    return 2 * 8192 ** 3 / time_cuda(lambda: a @ a).median_s


@lru_cache(maxsize=None)
def cpu_matmul_flops(threads: int) -> float:
    """float32 FLOP/s of a 2048^3 torch matmul on this CPU with this many threads: the rate
    CPU kernels are measured against (a CPU has no single datasheet peak we can trust)."""
    from .timing import time_cpu

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048 ** 3 / time_cpu(lambda: a @ b, min_time_s=1.0).median_s


@lru_cache(maxsize=None)
def cpu_copy_bandwidth() -> float:
    """Bytes read plus bytes written per second by a single-threaded 256 MiB memcpy
    (numpy copyto) on this CPU: the rate CPU data kernels are measured against."""
    import numpy as np

    from .timing import time_cpu

    src = np.random.default_rng(0).integers(0, 255, 256 << 20, dtype=np.uint8)
    dst = np.empty_like(src)
    return 2 * src.nbytes / time_cpu(lambda: np.copyto(dst, src), min_time_s=1.0).median_s


@lru_cache(maxsize=None)
def cuda_copy_bandwidth(device: str = "cuda") -> float:
    """Bytes read plus bytes written per second by a 1 GiB device-to-device copy (torch
    copy_, CUDA events, median): the rate GPU data-movement kernels are measured against."""
    from .timing import time_cuda

    src = torch.randint(0, 127, (1 << 30,), dtype=torch.int8, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / time_cuda(lambda: dst.copy_(src)).median_s


@lru_cache(maxsize=None)
def cuda_host_to_device_bandwidth(device: str = "cuda") -> float:
    """Bytes/s of a 256 MiB copy from pinned host memory to the GPU (CUDA events, median):
    the ceiling of anything that feeds the GPU from the host, such as a data loader."""
    from .timing import time_cuda

    src = torch.randint(0, 127, (256 << 20,), dtype=torch.int8).pin_memory()
    dst = torch.empty(src.shape, dtype=src.dtype, device=device)
    return src.numel() / time_cuda(lambda: dst.copy_(src, non_blocking=True)).median_s


def known_gpu(name: str) -> str | None:
    """The key of PEAKS / MEASURED that a device name belongs to (e.g. "H200"), or None."""
    return next((fragment for fragment in PEAKS if fragment in name), None)


def copy_bandwidth(device: str) -> float:
    """Measured copy bandwidth (read + written bytes/s) of the device: memcpy on CPU."""
    if torch.device(device).type == "cuda":
        return cuda_copy_bandwidth(str(torch.device(device)))
    return cpu_copy_bandwidth()


def peaks(device: str) -> tuple[float, float]:
    """(FLOP/s, bytes/s) to take fractions of: the datasheet for GPUs in PEAKS; measured
    otherwise: on CPU (float32 matmul FLOP/s with torch's threads, single-threaded memcpy
    bytes/s), on other GPUs (bfloat16 matmul, device-to-device copy)."""
    if torch.device(device).type == "cpu":
        return cpu_matmul_flops(torch.get_num_threads()), cpu_copy_bandwidth()
    gpu = known_gpu(device_name(device))
    if gpu:
        return PEAKS[gpu]
    dev = str(torch.device(device))
    return cuda_matmul_flops(dev), cuda_copy_bandwidth(dev)


def measured_ceilings(device: str) -> tuple[float, float]:
    """(FLOP/s, bytes/s) measured on this device in this process: bf16 matmul and a
    device copy on GPUs; on CPU the same as peaks()."""
    if torch.device(device).type == "cpu":
        return peaks(device)
    dev = str(torch.device(device))
    return cuda_matmul_flops(dev), cuda_copy_bandwidth(dev)


if __name__ == "__main__":  # `python -m kernelsuite.harness.devices`: this machine's name
    print(machine_name("cuda" if torch.cuda.is_available() else "cpu"))
