"""`kernelsuite profile CASE`: where the time of one registry case goes.

CPU cases: py-spy samples a child process that calls the case in a loop (after a warm-up,
so compilation stays out), twice: a flame graph (SVG) and a speedscope JSON. --native adds
C/C++ frames (numpy, torch, libc); Numba's compiled code has no symbols and shows as
addresses under the Python call that entered it.
CUDA cases (or --tool torch): torch.profiler over a few calls: a Chrome trace (chrome://tracing or
https://ui.perfetto.dev), the key_averages table sorted by GPU time, and a memory timeline.
Everything goes to OUT/<kernel>/<case>/ (OUT: profiles/ by default).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from .cases import check_device, find_case
from .measure import Call, check_impl
from .registry import OURS

MAX_SECONDS = 86400.0  # py-spy's --duration; a day is more than any profile needs


def loop(case_id: str, impl: str, device: str, seconds: float) -> int:
    """The profiled child: warm up, print "ready", then call the case for `seconds` (or
    until killed). Returns the number of calls."""
    call = Call(find_case(case_id, device), impl, device, check=False)
    print("ready", flush=True)
    calls, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        call()
        calls += 1
    return calls


def check_seconds(seconds: float) -> float:
    """Seconds of calls to sample: a number in (0, MAX_SECONDS]; ValueError otherwise."""
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_SECONDS):
        raise ValueError(f"seconds must be a number in (0, {MAX_SECONDS:g}], got {seconds!r}")
    return seconds


def default_impl(case) -> str:
    """The project's own implementation (the first a case lists, if none says it is)."""
    return next((i for i in case.impls if case.roles.get(i) == OURS), next(iter(case.impls)))


def profile(case_id: str, impl: str | None = None, device: str | None = None,
            out: str = "profiles", seconds: float = 5.0, native: bool = False,
            rate: int = 250, tool: str = "auto", listing: str | None = None) -> list[Path]:
    """tool: "py-spy", "torch" (torch.profiler) or "auto" (torch on CUDA, py-spy on CPU).
    listing: look the case up among this device type's cases (see cases.find_case)."""
    if tool not in ("auto", "py-spy", "torch"):
        raise ValueError(f"tool must be auto, py-spy or torch, got {tool!r}")
    check_seconds(seconds)
    device = check_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    case = find_case(case_id, device, listing)
    impl = check_impl(case, impl or default_impl(case), device)  # before any file is made
    folder = Path(out) / case.kernel / case.name
    folder.mkdir(parents=True, exist_ok=True)
    cuda = torch.device(device).type == "cuda"
    if tool == "torch" or tool == "auto" and cuda:
        return _torch_profile(case, impl, device, folder)
    return _py_spy(case, impl, device, folder, seconds, native, rate)


def _py_spy(case, impl, device, folder, seconds, native, rate) -> list[Path]:
    """py-spy attaches once the child has imported and warmed up, so imports and JIT
    compilation stay out of the samples; it records twice (one format each)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise FileNotFoundError("py-spy is not installed: pip install py-spy (or "
                                "'.[bench]')")
    child = subprocess.Popen([sys.executable, "-m", "kernelsuite.harness.profile", case.id,
                              impl, device, str(3 * seconds + 60)], stdout=subprocess.PIPE,
                             text=True)
    files = []
    try:
        if child.stdout.readline().strip() != "ready":
            raise ChildProcessError(f"the profiled process for {case.id} failed to start "
                                    "(its error is above)")
        for fmt, name in (("flamegraph", f"flame-{impl}.svg"),
                          ("speedscope", f"speedscope-{impl}.json")):
            path = folder / name
            done = subprocess.run([spy, "record", "--pid", str(child.pid), "--duration",
                                   str(max(1, round(seconds))), "--rate", str(rate),
                                   "--format", fmt, "-o", str(path),
                                   *(["--native"] if native else [])],
                                  capture_output=True, text=True)
            if done.returncode:  # e.g. not allowed to ptrace: say why, in one line
                why = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
                raise ChildProcessError(f"py-spy record failed: {why}")
            files.append(path)
    finally:
        child.kill()
        child.wait()
    top = folder / f"top-{impl}.txt"
    top.write_text(top_frames(files[1]))
    return files + [top]


def top_frames(speedscope_json, limit: int = 20) -> str:
    """Text tables of a py-spy speedscope file: the frames with the most time of their own
    (self) and the Python functions with the most time under them (total), in % of the
    time sampled over all threads. Addresses without symbols (Numba's compiled code) are
    counted as "JIT code" under the nearest frame that has a name."""
    import json
    from collections import Counter

    data = json.loads(Path(speedscope_json).read_text())
    names = []
    for fr in data["shared"]["frames"]:
        where = Path(fr.get("file", "?")).name
        names.append(None if fr["name"].startswith("0x") and where in ("?", "")
                     else f"{fr['name']} ({where}:{fr.get('line', '')})")
    own, under, seconds = Counter(), Counter(), 0.0  # weights are seconds
    for prof in data["profiles"]:
        for stack, weight in zip(prof["samples"], prof["weights"]):
            seconds += weight
            named = [names[f] for f in stack if names[f]]
            if not stack:
                continue
            leaf = names[stack[-1]] or f"JIT code (no symbols) under {named[-1] if named else '?'}"
            own[leaf] += weight
            for name in set(n for n in named if ".py:" in n):
                under[name] += weight
    lines = [f"{seconds:.1f} s sampled over all threads; % of that time", "",
             "self: time in the frame itself"]
    lines += [f"{100 * t / seconds:6.1f}  {name}" for name, t in own.most_common(limit)]
    lines += ["", "total: time in Python functions and what they called"]
    lines += [f"{100 * t / seconds:6.1f}  {name}" for name, t in under.most_common(limit)]
    return "\n".join(lines) + "\n"


def _torch_profile(case, impl, device, folder, calls: int = 5) -> list[Path]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    call = Call(case, impl, device, check=False)  # warm-up: out of the trace
    cuda = call.cuda
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=activities, record_shapes=True, profile_memory=True,
                       with_stack=True) as prof:
        for _ in range(calls - 1):
            call()
        call.synced()
    trace, table, memory = (folder / f"trace-{impl}.json", folder / f"key_averages-{impl}.txt",
                            folder / f"memory-{impl}.html")
    prof.export_chrome_trace(str(trace))
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table.write_text(prof.key_averages().table(sort_by=key, row_limit=30) + "\n")
    with warnings.catch_warnings():  # deprecated in newer torch, still the one-file view
        warnings.simplefilter("ignore", FutureWarning)
        try:
            prof.export_memory_timeline(str(memory), device=str(torch.device(device)))
        except ValueError:  # torch finds no allocation on the device to draw (min of [])
            memory = memory.with_suffix(".txt")
            memory.write_text(f"No memory timeline: torch.profiler recorded no allocation "
                              f"on {device} during the {calls} profiled calls of "
                              f"{case.id} ({impl}).\n")
    return [trace, table, memory]


if __name__ == "__main__":  # the child py-spy records: CASE IMPL DEVICE SECONDS
    case_id, impl, device, seconds = sys.argv[1:5]
    print(loop(case_id, impl, device, float(seconds)), "calls")
