"""Roofline floors: the least time a case can take on a device, and which resource sets it.

A case does `flops` of arithmetic, moves `bytes` through the device's memory (each input
read once, each output written once) and, for loaders feeding a GPU, `host_bytes` over the
host-to-device link. At rates (FLOP/s, memory bytes/s, link bytes/s) each term is a time;
the largest is the floor, and a measured time is judged by floor / time (frac_peak).

`kernelsuite roofline [--gpu H200]` writes the floors of every GPU benchmark case at the
datasheet peaks and at the ceilings measured on such machines (devices.PEAKS, MEASURED,
HOST_LINK) to bench/report/roofline-<gpu>.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .cases import get_cases
from .devices import HOST_LINK, MEASURED, PEAKS
from .registry import Case


def floor_terms(case: Case, flops_rate: float, bandwidth: float,
                host_link: float | None = None) -> dict[str, float]:
    """Seconds each resource needs for one call: compute, memory and (when the case
    crosses a host link and its rate is given) host link."""
    terms = {"compute": case.flops / flops_rate if case.flops else 0.0,
             "memory": case.bytes / bandwidth if case.bytes else 0.0}
    if case.host_bytes and host_link:
        terms["host link"] = case.host_bytes / host_link
    return terms


def floor_seconds(case: Case, flops_rate: float, bandwidth: float,
                  host_link: float | None = None) -> tuple[float, str]:
    """(floor in seconds, the bound: "compute", "memory" or "host link")."""
    terms = floor_terms(case, flops_rate, bandwidth, host_link)
    bound = max(terms, key=terms.get)
    return terms[bound], bound


def table(gpu: str = "H200", kernels=None):
    """One row per GPU benchmark case (the full sweep; `quick` marks the default subset):
    work, bytes, intensity, bound and floor at the datasheet and at measured ceilings."""
    import pandas as pd

    if gpu not in PEAKS:
        raise ValueError(f"gpu must be one of {sorted(PEAKS)}, got {gpu!r}")
    quick = {c.id for c in get_cases(kernels, "cuda", size="quick")}
    rows = []
    for case in get_cases(kernels, "cuda", size="all"):
        sheet, bound = floor_seconds(case, *PEAKS[gpu], HOST_LINK)
        measured, _ = floor_seconds(case, *MEASURED[gpu], HOST_LINK)
        rate = (f"{case.flops / sheet / 1e12:.0f} TFLOP/s" if bound == "compute" else
                f"{(case.host_bytes if bound == 'host link' else case.bytes) / sheet / 1e9:.0f}"
                " GB/s")
        rows.append(dict(kernel=case.kernel, case=case.name, quick=case.id in quick,
                         gflop=case.flops / 1e9, mb=case.bytes / 1e6,
                         host_mb=case.host_bytes / 1e6 or None,
                         flop_per_byte=case.flops / case.bytes if case.flops and case.bytes else None,
                         bound=bound, floor_ms=sheet * 1e3, floor_measured_ms=measured * 1e3,
                         rate_at_floor=rate))
    return pd.DataFrame(rows)


def render(df, gpu: str) -> str:
    flops, bandwidth = PEAKS[gpu]
    mflops, mbandwidth = MEASURED[gpu]
    out = [f"# Roofline floors of every GPU benchmark case on the {gpu}", "",
           f"Floors at the datasheet peaks ({flops / 1e12:.0f} TFLOP/s dense bf16/fp16, "
           f"{bandwidth / 1e12:.2f} TB/s memory, {HOST_LINK / 1e9:.0f} GB/s host-to-device "
           f"over PCIe 5.0 x16) and at the ceilings measured on such machines "
           f"({mflops / 1e12:.0f} TFLOP/s bf16 matmul, {mbandwidth / 1e12:.1f} TB/s device "
           "copy; the host link at its datasheet rate). The machine balance is "
           f"{flops / bandwidth:.0f} FLOP/byte: cases above it are compute-bound. "
           "Regenerate with `kernelsuite roofline --gpu " + gpu + "`; the benchmark table of "
           "a GPU run (`kernelsuite bench`, `ci/gpu.sh`) prints floor_ms and frac_peak = "
           "floor / measured time beside every time, and frac_ceiling against the ceilings "
           "that run measured.", "",
           "FLOPs: attention forward 4 x batch x heads x visible (query, key) pairs x "
           "head_dim, backward 2.5x (DESIGN.md). Bytes: every input read once and every "
           "output written once. The data loader's floor is the host link (its batches are "
           "built in host memory, x and y as int64); its host-side gather is bound by the "
           "host's memory, measured in the run. A training step: 6 x non-embedding parameters x "
           "real tokens (the useful work; padding not counted), bytes not modelled.", ""]
    for kernel, part in df.groupby("kernel", sort=False):
        quick = part[part.quick]
        out += [f"## {kernel}", "",
                f"{len(part)} cases ({len(quick)} in the quick set, marked). Sum of the quick "
                f"set's floors: {quick.floor_ms.sum():.2f} ms at the datasheet, "
                f"{quick.floor_measured_ms.sum():.2f} ms at the measured ceilings.", ""]
        shown = part.assign(quick=part.quick.map({True: "yes", False: ""}))
        shown = shown.drop(columns=["kernel"]).dropna(axis=1, how="all")
        out += [shown.to_markdown(index=False, floatfmt=".4g"), ""]
    return "\n".join(out)


def write(gpu: str = "H200", out: str | Path | None = None) -> Path:
    path = Path(out or f"bench/report/roofline-{gpu}.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(table(gpu), gpu))
    return path


if __name__ == "__main__":
    print(write(*sys.argv[1:2]))
