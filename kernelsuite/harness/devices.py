"""Which machine a figure came from, and its peaks (to turn rates into fractions)."""

from __future__ import annotations

import platform

import torch

# name fragment -> (dense 16-bit tensor FLOP/s, memory bytes/s), from DESIGN.md
PEAKS = {
    "H100": (989e12, 3.35e12),
    "H200": (989e12, 4.8e12),
}


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


def peaks(device: str) -> tuple[float, float] | None:
    """(FLOP/s, bytes/s) for known GPUs, else None."""
    name = device_name(device)
    for fragment, value in PEAKS.items():
        if fragment in name:
            return value
    return None
