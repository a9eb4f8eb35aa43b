"""Argument checks every area shares: integers, seeds, and the choice of a kernel backend.

Each raises a ValueError or TypeError whose message starts with the argument's name, so a
caller sees which of its arguments is wrong.
"""

from __future__ import annotations

import operator
import os

import numpy as np

SEED_RANGE = 2**63  # torch.Generator.manual_seed takes [-2^63, 2^64): seed + epoch fits


def is_int(value) -> bool:
    """An int or numpy integer, and not a bool (True is not 1 here)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def as_index(value) -> int | None:
    """value as an int where Python would index with it (int, numpy integer, a 0-dim
    integer tensor: anything with __index__), None otherwise; bools are not ints here."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def positive_int(value, name: str, maximum: int | None = None, maximum_text: str = "") -> int:
    """value as an int >= 1 (and <= maximum); ValueError naming the argument otherwise.
    maximum_text: how the message writes the maximum (default: its digits)."""
    if not is_int(value) or value < 1 or maximum is not None and value > maximum:
        bound = "" if maximum is None else f" (at most {maximum_text or maximum})"
        raise ValueError(f"{name} must be a positive int{bound}, got {value!r}")
    return int(value)


def check_seed(value, name: str = "seed") -> int:
    """A seed as an int in [-2**63, 2**63): TypeError for a non-integer, ValueError outside."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not -SEED_RANGE <= value < SEED_RANGE:
        raise ValueError(f"{name} must be an int in [-2**63, 2**63), got {value!r}")
    return int(value)


def check_epoch(value, name: str = "epoch") -> int:
    """An epoch number: an int in [0, 2**63) (seed + epoch still fits torch's seeds)."""
    if not is_int(value) or not 0 <= value < SEED_RANGE:
        raise ValueError(f"{name} must be an int in [0, 2**63), got {value!r}")
    return int(value)


def interpreting() -> bool:
    """Whether Triton runs under its CPU interpreter (TRITON_INTERPRET=1, read when triton
    is imported)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve_backend(backend, tensor, backends, auto) -> str:
    """The backend an area's function runs: backend must be one of backends; "auto" becomes
    auto(tensor). "triton" needs CUDA tensors (or the interpreter), "numba" CPU tensors.
    tensor: the call's first tensor argument (the caller checks it is one)."""
    if not isinstance(backend, str) or backend not in backends:
        raise ValueError(f"backend must be one of {tuple(backends)}, got {backend!r}")
    device = tensor.device
    if backend == "auto":
        return auto(tensor)
    if backend == "triton" and device.type != "cuda" and not interpreting():
        raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before "
                         f"triton is imported, to interpret on CPU); got tensors on {device}")
    if backend == "numba" and device.type != "cpu":
        raise ValueError(f"backend='numba' needs CPU tensors; got tensors on {device}")
    return backend


def device_type(device) -> str:
    """"cpu" or "cuda" for a device such as "cuda:0"; ValueError naming it otherwise."""
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError, ValueError):  # torch's message lists 20 device types
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    return kind


def check_device(device, hint: str = "") -> str:
    """device, if this machine has it (cpu, or a CUDA device torch sees); ValueError naming
    it otherwise (hint: what to do instead, said when there is no GPU at all)."""
    import torch

    if device_type(device) == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (torch.device(device).index or 0) >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s)"
                             + ("" if count or not hint else f"; {hint}"))
    return device
