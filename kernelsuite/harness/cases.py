"""Benchmark cases, declared once and consumed by pytest-benchmark, asv and the CLI.

A case is one problem (kernel, parameters, how to build inputs, FLOPs and bytes, the
devices it runs on, how to check an output) plus the implementations that solve it on a
device: the project's kernels, the reference, and the best alternatives installed. Each
kernel area registers a function ``cases(device, size) -> list[Case]`` in REGISTRY, for
each size in SIZES: "quick" (the default subset), "all" (the full sweep) and "tiny" (the same
code at toy shapes, so that a dry run on a CPU, Triton under its interpreter, goes through
every step a GPU run takes in seconds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# Implementation names that are alternatives to ours (not ours, not the reference):
# speedups are reported against the fastest of them.
ALTERNATIVE_PREFIX = ("sdpa", "nanogpt")
SIZES = ("tiny", "quick", "all")


@dataclass
class Case:
    kernel: str
    name: str
    params: dict
    flops: float
    bytes: float
    make_inputs: Callable[[str], Any]  # device -> inputs (fresh random data)
    # implementation name -> fn(inputs) doing the work once (forward, or forward + backward)
    impls: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    reference: str = "torch"
    tokens: int = 0  # tokens per call, for data cases (reported as Mtok/s)
    host_bytes: float = 0.0  # bytes a call must move from host to device (a GPU's loader)
    devices: tuple = ("cpu", "cuda")  # device types the case runs on
    # truth(inputs) -> the exact answer for those inputs (float64 reference, or the exact
    # reference of an integer kernel); error(output, truth) -> its max error (0 = exact).
    # None: the case has no checkable answer. Impls in `unchecked` are not compared (e.g. a
    # random sampler that draws other batches).
    truth: Callable[[Any], Any] | None = None
    error: Callable[[Any, Any], float] | None = None
    unchecked: tuple = ()

    @property
    def id(self) -> str:
        return f"{self.kernel}/{self.name}"


REGISTRY: dict[str, Callable[[str, bool], list[Case]]] = {}
# kernel -> device type -> every implementation name its cases may have there, whatever is
# installed: asv's parameters must not depend on the machine that discovers them
IMPLEMENTATIONS: dict[str, dict[str, list[str]]] = {}
# kernel -> fn(device) -> lines printed under the benchmark table (e.g. compile times)
NOTES: dict[str, Callable[[str], list[str]]] = {}


def register(kernel: str, impls: dict[str, list[str]]):
    def deco(fn):
        REGISTRY[kernel] = fn
        IMPLEMENTATIONS[kernel] = impls
        return fn
    return deco


def register_notes(kernel: str):
    def deco(fn):
        NOTES[kernel] = fn
        return fn
    return deco


def get_notes(kernels=None, device: str = "cpu") -> list[str]:
    _load()
    return [line for k in (kernels or list(NOTES)) if k in NOTES for line in NOTES[k](device)]


def get_cases(kernels=None, device: str = "cpu", size: str = "quick") -> list[Case]:
    """Every registered case of the kernels (default: all) for the device, at size."""
    _load()
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    names = list(dict.fromkeys(kernels)) if kernels else list(REGISTRY)  # each once
    unknown = [k for k in names if k not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown kernel(s) {unknown}; known: {sorted(REGISTRY)}")
    kind = _device_type(device)
    return [case for k in names for case in REGISTRY[k](device, size) if kind in case.devices]


def implementation_names(kernel: str, device: str) -> list[str]:
    """Every implementation the kernel's cases may have on this type of device."""
    _load()
    return list(IMPLEMENTATIONS[kernel].get(_device_type(device), []))


def _device_type(device: str) -> str:
    """"cpu" or "cuda" for a device such as "cuda:0"; ValueError naming it otherwise."""
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError, ValueError):  # torch's message lists 20 device types
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}")
    return kind


def check_device(device: str) -> str:
    """device, if this machine has it (cpu, or a CUDA device torch sees); ValueError naming
    it otherwise. Listing cases needs no GPU (get_cases); running them does."""
    import torch

    if _device_type(device) == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (torch.device(device).index or 0) >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s)"
                             + ("" if count else "; the GPU cases' code runs on the CPU as "
                                "a dry run with --tiny (bench) or --gpu-case (profile)"))
    return device


def find_case(case_id: str, device: str = "cpu", listing: str | None = None) -> Case:
    """The case named "kernel/name" (from the full sweep, or the tiny set) on this device;
    listing: the device type whose cases to look in (default: device's), e.g. "cuda" to run
    a GPU case's code on the CPU in a dry run."""
    if "/" not in case_id:
        raise ValueError(f"case id must be kernel/name (e.g. packing/ffd-mixed-c2048), got "
                         f"{case_id!r}")
    kernel, _, name = case_id.partition("/")
    where = listing or device
    other = "cpu" if _device_type(where) == "cuda" else "cuda"

    def listed(dev):
        return [c for size in ("all", "tiny") for c in get_cases([kernel], dev, size)]

    known = listed(where)
    for case in known:
        if case.name == name:
            return case
    known, theirs = [c.id for c in known], [c.id for c in listed(other)]
    if case_id in theirs:  # e.g. a GPU-only case asked for on the CPU
        raise ValueError(f"case {case_id!r} is a {other} case, not one of the {where} cases"
                         + (" (its code runs on the CPU as a dry run with --gpu-case, "
                            "listing='cuda')" if other == "cuda" else ""))
    if not known:
        raise ValueError(f"unknown case {case_id!r}: {kernel} has no {where} cases; its "
                         f"{other} cases: {theirs}")
    raise ValueError(f"unknown case {case_id!r} on {where}; known: {known}")


def _load():
    from . import attention_cases, batching_cases, data_cases  # noqa: F401  (they register)
