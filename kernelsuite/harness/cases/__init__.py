"""The kernel areas of the benchmark suite, one module each, and the lookups over them.

Every module in this package is an area: it defines ``AREA = Area(name=<module name>,
...)`` (harness.registry). The CLI, pytest-benchmark (bench/test_bench.py), asv
(bench/asv_bench/suites.py), the profiler and the reports all list areas and cases
from here, so adding an area is adding a module.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..._checks import check_device as _check_device
from ..._checks import device_type
from ..registry import SIZES, Area, Case

_AREAS: dict[str, Area] = {}


def area_names() -> list[str]:
    """The areas' names, without importing them (their modules' names)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def areas() -> dict[str, Area]:
    """name -> Area, every module of this package imported once."""
    if not _AREAS:
        for name in area_names():
            area = importlib.import_module(f"{__name__}.{name}").AREA
            if area.name != name:
                raise ValueError(f"{__name__}.{name} defines AREA named {area.name!r}: an "
                                 "area's name is its module's")
            _AREAS[name] = area
    return _AREAS


def _known(kernels) -> list[str]:
    names = list(dict.fromkeys(kernels)) if kernels else list(areas())  # each once
    unknown = [k for k in names if k not in areas()]
    if unknown:
        raise ValueError(f"unknown kernel(s) {unknown}; known: {sorted(areas())}")
    return names


def get_cases(kernels=None, device: str = "cpu", size: str = "quick") -> list[Case]:
    """Every case of the areas (default: all) for the device, at size, each with its
    implementations' roles."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    kind = device_type(device)
    out = []
    for name in _known(kernels):
        area = areas()[name]
        for case in area.cases(device, size):
            if kind in case.devices:
                case.roles = dict(area.roles)
                out.append(case)
    return out


def get_notes(kernels=None, device: str = "cpu") -> list[str]:
    return [line for k in _known(kernels) if areas()[k].notes
            for line in areas()[k].notes(device)]


def implementation_names(kernel: str, device: str) -> list[str]:
    """Every implementation the kernel's cases may have on this type of device."""
    return list(areas()[kernel].impls.get(device_type(device), []))


def teardown(kernel: str) -> None:
    """What a benchmark process runs when it is done with the area's cases."""
    if areas()[kernel].teardown:
        areas()[kernel].teardown()


def check_device(device: str) -> str:
    """device, if this machine has it (cpu, or a CUDA device torch sees); ValueError naming
    it otherwise. Listing cases needs no GPU (get_cases); running them does."""
    return _check_device(device, hint="the GPU cases' code runs on the CPU as a dry run "
                                      "with --tiny (bench) or --gpu-case (profile)")


def find_case(case_id: str, device: str = "cpu", listing: str | None = None) -> Case:
    """The case named "kernel/name" (from the full sweep, or the tiny set) on this device;
    listing: the device type whose cases to look in (default: device's), e.g. "cuda" to run
    a GPU case's code on the CPU in a dry run."""
    if "/" not in case_id:
        raise ValueError(f"case id must be kernel/name (e.g. packing/ffd-mixed-c2048), got "
                         f"{case_id!r}")
    kernel, _, name = case_id.partition("/")
    where = listing or device
    other = "cpu" if device_type(where) == "cuda" else "cuda"

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
