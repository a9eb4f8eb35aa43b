"""What each Triton kernel costs on Hopper (sm_90: H100, H200), known without a GPU.

Every kernel is compiled the way the JIT compiles it on an H100/H200: the real launchers
(`triton_flash.forward` / `backward`, the pad/unpad gather) are called on small CPU tensors
with a compile-only driver that reports an sm_90 target, and each launch becomes
`warmup()` of every autotune config the autotuner may pick for those arguments (its own
pruning applied). So the specialisation (16-byte aligned pointers, strides divisible by 16,
GQA group 1) and the config list are the JIT's, not a hand-written copy.

For each binary, the tools in triton's package read off:
- `cuobjdump --dump-resource-usage`: registers per thread, stack frame, local memory;
- `ptxas -v` on the same PTX: spill stores and loads (bytes of local memory traffic);
- `cuobjdump -sass`: HGMMA (wgmma: Hopper's warpgroup tensor cores), HMMA (the older
  mma.sync path), UTMALDG/UBLKCP (TMA bulk copies), LDGSTS (cp.async), LDL/STL;
and the occupancy follows from the sm_90 limits below.

`python -m kernelsuite.harness.hopper` (or `kernelsuite hopper-static`) writes the table to
bench/report/hopper-static.md. It must run without TRITON_INTERPRET (the interpreter
compiles nothing).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import triton

# sm_90 limits per SM (CUDA C programming guide, compute capability 9.0)
REGISTERS_PER_SM = 65536
REGISTER_UNIT = 256  # registers are allocated to a warp in units of 256
MAX_REGISTERS_PER_THREAD = 255
SMEM_PER_SM = 228 * 1024
SMEM_PER_BLOCK = 227 * 1024  # the most one block may ask for (opt-in)
SMEM_RESERVED_PER_BLOCK = 1024  # the CUDA runtime's own, per resident block
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32

DTYPES = ("fp16", "bf16", "fp32")
# the launch variants compiled besides the plain one, each with causal on (Problem.features)
FEATURES = ("-", "varlen", "softcap", "gqa", "alibi+dropout")
HEAD_DIMS = (64, 128, 256)
# a problem's pass -> the kernel a candidate tile is tried on: the forward; the backward
# with atomic dQ (its dK/dV kernel, the heaviest); the deterministic backward (its dQ kernel)
PASS_KERNEL = {"fwd": "fwd", "bwd": "bwd-dkdv", "bwd-det": "bwd-dq"}
# (batch, seqlen, heads_q, heads_kv) of the recorded launches: heads_q * head_dim is a
# multiple of 16, as in any real model, so the JIT specialises the strides the same way
SHAPE = (2, 512, 16, 16)
GQA_SHAPE = (2, 512, 16, 4)


# ----------------------------------------------------------------------------- compiling


def _torch_dtype(name):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


class _CompileOnly:
    """A triton driver that answers 'an sm_90 GPU' and launches nothing: with it active,
    `kernel.warmup(...)` compiles exactly what a launch on an H100/H200 would compile."""

    def __init__(self):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", 90, 32)

    def is_active(self):
        return True

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")


class _Recorder:
    """Stands in for a kernel in its launcher's module: `kernel[grid](*args, **kwargs)`
    compiles every config the autotuner may pick for those arguments and records, per
    binary, (label, config, CompiledKernel, seconds, ptxas log or "" when it was cached)."""

    def __init__(self, kernel, label, sink, tiles=()):
        self.kernel, self.label, self.sink, self.tiles = kernel, label, sink, tiles

    def _warmup(self, fn, config, *args, **kwargs):
        log = io.StringIO()
        t0 = time.perf_counter()
        with redirect_stdout(log):  # TRITON_DUMP_PTXAS_LOG prints ptxas -v here
            compiled = fn.warmup(*args, **kwargs)
        self.sink.append((self.label, config, compiled, time.perf_counter() - t0,
                          log.getvalue()))

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            k = self.kernel
            if hasattr(k, "prune_configs"):  # an Autotuner: its own pruning decides
                k.nargs = dict(zip(k.arg_names, args))
                configs = k.prune_configs(kwargs)
                k.nargs = None
                if self.tiles:  # a candidate tile instead of the tuned list
                    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w,
                                             num_stages=st) for m, n, w, st in self.tiles]
                for config in configs:
                    self._warmup(k.fn, dict(config.kwargs), *args, grid=grid, **kwargs,
                                 **config.all_kwargs())
            else:
                self._warmup(k, {}, *args, grid=grid, **kwargs)
        return launch

    def __getattr__(self, name):  # e.g. `.fn`, `.configs` for code that inspects kernels
        return getattr(self.kernel, name)


@contextmanager
def compile_only(sink, tiles=None):
    """Inside: the attention (prefill and decode) and pad/unpad launchers compile for sm_90
    and launch nothing;
    what each launch compiled goes to sink (see _Recorder). tiles: {label: [tile, ...]}
    compiles those tiles for that kernel instead of the ones its autotuner would pick."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("the sm_90 compile needs the compiler: unset TRITON_INTERPRET")
    from triton.runtime import driver

    from ..attention import triton_decode as td
    from ..attention import triton_flash as tf
    from ..batching import triton_padding as tp

    kernels = {(tf, "_fwd"): "fwd", (tf, "_bwd_preprocess_kernel"): "bwd-preprocess",
               (tf, "_bwd_dkdv"): "bwd-dkdv", (tf, "_bwd_dq"): "bwd-dq",
               (td, "_decode_kernel"): "decode", (tp, "_gather_rows_kernel"): "pad-unpad"}
    saved = {key: getattr(*key) for key in kernels}
    previous = getattr(driver, "_active", None)
    driver.set_active(_CompileOnly())
    dump = os.environ.get("TRITON_DUMP_PTXAS_LOG")
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    try:
        for (module, name), label in kernels.items():
            setattr(module, name, _Recorder(saved[module, name], label, sink,
                                            (tiles or {}).get(label, ())))
        yield sink
    finally:
        for (module, name), kernel in saved.items():
            setattr(module, name, kernel)
            # the JIT keeps a per-device binder made for our target: drop it
            jit = getattr(kernel, "fn", kernel)
            getattr(jit, "device_caches", {}).clear()
        driver._active = previous
        if dump is None:
            os.environ.pop("TRITON_DUMP_PTXAS_LOG", None)
        else:
            os.environ["TRITON_DUMP_PTXAS_LOG"] = dump


@dataclass(frozen=True)
class Problem:
    """One attention or pad/unpad call whose launches are compiled."""

    kernel: str  # "attention" or "padding"
    dtype: str
    head_dim: int = 0  # attention
    causal: bool = False
    pass_: str = "fwd"  # "fwd", or "bwd" (atomic dQ) / "bwd-det" (deterministic)
    varlen: bool = False
    softcap: bool = False
    gqa: bool = False
    alibi: bool = False
    dropout: bool = False
    n_cols: int = 0  # padding
    tile: tuple = ()  # a candidate (BLOCK_M, BLOCK_N, warps, stages) for the pass's kernel

    @property
    def features(self) -> str:
        names = [n for n, on in (("varlen", self.varlen), ("softcap", self.softcap),
                                 ("gqa", self.gqa), ("alibi", self.alibi),
                                 ("dropout", self.dropout)) if on]
        return "+".join(names) or "-"


def _launch(problem: Problem):
    """Call the problem's launcher (inside compile_only: nothing runs on any device)."""
    import torch

    dtype = _torch_dtype(problem.dtype)
    if problem.kernel == "padding":
        from ..batching import triton_padding as tp

        src = torch.empty(64, problem.n_cols, dtype=dtype)
        tp._gather_rows(src, torch.arange(48))
        return
    from ..attention import triton_flash as tf

    batch, seqlen, hq, hkv = GQA_SHAPE if problem.gqa else SHAPE
    d = problem.head_dim
    q = torch.empty(batch, seqlen, hq, d, dtype=dtype)
    k = torch.empty(batch, seqlen, hkv, d, dtype=dtype)
    cu = max_len = None
    if problem.varlen:
        q, k = q.flatten(0, 1), k.flatten(0, 1)
        cu = torch.arange(0, batch * seqlen + 1, seqlen, dtype=torch.int32)
        max_len = seqlen
    args = (cu, cu, max_len, max_len, d ** -0.5, -1, 0 if problem.causal else -1,
            30.0 if problem.softcap else 0.0)
    lse_shape = (hq, q.shape[0]) if problem.varlen else (batch, hq, seqlen)
    out, lse = q.clone(), torch.empty(lse_shape, dtype=torch.float32)
    extra = dict(dropout_p=0.1 if problem.dropout else 0.0, philox=(2**40 + 1, 3),
                 alibi_slopes=torch.empty(hq) if problem.alibi else None)
    if problem.pass_ == "fwd":
        tf.forward(q, k, k, *args, **extra)
    else:
        tf.backward(q, None, q, k, k, out, lse, *args, problem.pass_ == "bwd-det", **extra)


def _tool(name: str) -> str:
    """ptxas / cuobjdump: TRITON_<NAME>_PATH, triton's own copy, or the PATH."""
    env = os.environ.get(f"TRITON_{name.upper()}_PATH")
    if env:
        return env
    import triton

    if name == "ptxas":  # the one triton itself runs for sm_90 (3.9: "ptxas-blackwell")
        try:
            from triton.backends.nvidia.compiler import get_ptxas

            return get_ptxas(90).path
        except (ImportError, AttributeError, RuntimeError):
            pass
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    found = str(bundled) if bundled.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install triton with its CUDA tools, or set "
                           f"TRITON_{name.upper()}_PATH")
    return found


def _run(cmd) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed: {proc.stderr[-2000:]}")
    return proc.stdout + proc.stderr


SASS_OPS = {"hgmma": r"\bHGMMA\b", "hmma": r"\bHMMA\b", "tma": r"\b(UTMALDG|UTMASTG|UBLKCP)\b",
            "cp_async": r"\bLDGSTS\b", "ldl": r"\bLDL\b", "stl": r"\bSTL\b",
            "ldg128": r"\bLDG\.E\.128\b", "stg128": r"\bSTG\.E\.128\b"}


def _registers(ptxas_log: str) -> int:
    return int(re.search(r"Used (\d+) registers", ptxas_log).group(1))


def resources(compiled, ptxas_log: str = "") -> dict:
    """Registers, spills, stack, shared memory and instruction mix of one sm_90 binary.
    ptxas_log: what ptxas -v said when triton built it; without it (a cached binary) ptxas
    runs again on the same PTX."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin, ptx = Path(tmp) / "k.cubin", Path(tmp) / "k.ptx"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = _run([_tool("cuobjdump"), "--dump-resource-usage", str(cubin)])
        sass = _run([_tool("cuobjdump"), "-sass", str(cubin)])
        field = {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage)}
        # without the log, ptxas again with triton's flags: none up to 3.8, and 3.9 adds
        # --regAllocOptLevel=2 (for ptxas 13); the log must be of the binary triton built
        for flags in ([], ["--regAllocOptLevel=2"]):
            if "spill stores" in ptxas_log and _registers(ptxas_log) == field["REG"]:
                break
            ptx.write_text(compiled.asm["ptx"])
            ptxas_log = _run([_tool("ptxas"), "-v", *flags, "--gpu-name=sm_90a", str(ptx),
                              "-o", str(Path(tmp) / "check.cubin")])
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", ptxas_log)
    if _registers(ptxas_log) != field["REG"]:
        raise RuntimeError(f"ptxas -v says {_registers(ptxas_log)} registers, the cubin "
                           f"{field['REG']}")
    ops = {k: len(re.findall(p, sass)) for k, p in SASS_OPS.items()}
    return dict(registers=field["REG"], spill_stores=int(spills.group(1)),
                spill_loads=int(spills.group(2)), stack=field["STACK"], local=field["LOCAL"],
                static_smem=field["SHARED"], dynamic_smem=int(compiled.metadata.shared), **ops)


def occupancy(registers: int, smem_bytes: int, num_warps: int) -> dict:
    """Resident blocks and warps per SM on sm_90, and which limit binds. smem_bytes: what
    one block holds, the runtime's reserved kilobyte included (cuobjdump lists that
    kilobyte as the static SHARED of a kernel that uses shared memory)."""
    per_warp = -(-registers * 32 // REGISTER_UNIT) * REGISTER_UNIT
    limits = {"warps": MAX_WARPS_PER_SM // num_warps, "blocks": MAX_BLOCKS_PER_SM,
              "registers": (REGISTERS_PER_SM // per_warp) // num_warps,
              "smem": SMEM_PER_SM // smem_bytes}
    blocks = min(limits.values())
    return dict(blocks_per_sm=blocks, warps_per_sm=blocks * num_warps,
                occupancy=blocks * num_warps / MAX_WARPS_PER_SM,
                limited_by=min(limits, key=limits.get) if blocks < limits["warps"] else "warps")


# resources() per binary hash, for this process: a binary met again (the causal twin of a
# launch, bwd's preprocess kernel) comes from triton's cache without a ptxas log, and
# measuring it again would run ptxas again for the same answer
_RESOURCES: dict[str, dict] = {}


def compile_problem(problem: Problem) -> list[dict]:
    """Rows (one per binary the problem's launches compile) of resources and occupancy."""
    sink = []
    own = PASS_KERNEL[problem.pass_]
    with compile_only(sink, {own: [problem.tile]} if problem.tile else None):
        _launch(problem)
    rows = []
    for label, config, compiled, seconds, log in sink:
        if problem.tile and label != own:
            continue  # a candidate row is about its own kernel only
        meta = compiled.metadata
        if meta.hash not in _RESOURCES:
            _RESOURCES[meta.hash] = resources(compiled, log)
        res = _RESOURCES[meta.hash]
        # what the kernel asks for (the launch checks it against the per-block limit), and
        # what a resident block holds with the runtime's reserved kilobyte
        asked = res["dynamic_smem"] + max(0, res["static_smem"] - SMEM_RESERVED_PER_BLOCK)
        rows.append(dict(kernel=label, candidate=bool(problem.tile), dtype=problem.dtype,
                         head_dim=problem.head_dim,
                         causal=problem.causal, pass_=problem.pass_, features=problem.features,
                         n_cols=problem.n_cols, block_m=config.get("BLOCK_M"),
                         block_n=config.get("BLOCK_N"), num_warps=meta.num_warps,
                         num_stages=meta.num_stages, hash=meta.hash[:12], **res,
                         smem=asked, fits=asked <= SMEM_PER_BLOCK, compile_s=seconds,
                         **occupancy(res["registers"], asked + SMEM_RESERVED_PER_BLOCK,
                                     meta.num_warps)))
    return rows


# ----------------------------------------------------------------------------- plans


def attention_problems(dtypes=DTYPES, head_dims=HEAD_DIMS, features=True) -> list[Problem]:
    """Every dtype x head_dim x causal x pass (forward, backward with atomic dQ, and the
    deterministic backward with its own dQ kernel); with features, also varlen, softcap,
    GQA (one at a time, causal) and ALiBi with dropout (the two together: the most
    registers they can cost) at each dtype and head_dim."""
    out = []
    for dtype in dtypes:
        for d in head_dims:
            for pass_ in ("fwd", "bwd", "bwd-det"):
                for causal in (False, True):
                    out.append(Problem("attention", dtype, d, causal, pass_))
                if features:
                    for flags in FEATURES[1:]:
                        out.append(Problem("attention", dtype, d, True, pass_,
                                           **{flag: True for flag in flags.split("+")}))
    return out


def padding_problems(dtypes=DTYPES) -> list[Problem]:
    """The row gather at a model's hidden size (16-byte rows) and at an odd width."""
    return [Problem("padding", dtype, n_cols=n) for dtype in dtypes for n in (4096, 1000)]


def candidate_tiles(kernel: str, dtype: str) -> list[tuple]:
    """The grid the tuned tiles were chosen from (16-bit: tensor-core sizes; float32: small
    tiles, since exact float32 products run on the FMA units and hold every operand in
    registers, plus a single-stage variant of the smallest)."""
    if dtype == "fp32":
        shapes = {"fwd": [(16, 32), (32, 32), (32, 64), (64, 32), (64, 64)],
                  "bwd-dkdv": [(16, 16), (16, 32), (32, 32), (16, 64), (32, 64)],
                  "bwd-dq": [(16, 16), (16, 32), (32, 32), (32, 64), (64, 32)]}[kernel]
        extra = ([] if kernel == "fwd" else [(16, 16, 8, 1)]) + [(16, 32, 8, 1)]
        return [(m, n, w, 2) for m, n in shapes for w in (4, 8)] + extra
    grid = {"fwd": ((64, 128), (32, 64, 128), (2, 3, 4)),
            "bwd-dkdv": ((16, 32, 64), (32, 64, 128), (2, 3)),
            "bwd-dq": ((32, 64, 128), (32, 64), (2, 3))}[kernel]
    return [(m, n, w, st) for m in grid[0] for n in grid[1] for w in (4, 8) for st in grid[2]]


def candidate_problems(dtypes=("bf16", "fp32"), head_dims=HEAD_DIMS) -> list[Problem]:
    """Every candidate tile of every kernel, causal, without features; the dK/dV kernel's
    also with GQA (its GQA launches have lists of their own)."""
    out = []
    for pass_, kernel in PASS_KERNEL.items():
        for dtype in dtypes:
            for d in head_dims:
                for gqa in (False, True) if kernel == "bwd-dkdv" else (False,):
                    out += [Problem("attention", dtype, d, True, pass_, gqa=gqa, tile=tile)
                            for tile in candidate_tiles(kernel, dtype)]
    return out


def sweep(problems, jobs: int = 1, on_rows=None) -> list[dict]:
    """compile_problem over problems, in `jobs` worker processes; on_rows(rows) is called
    as each problem finishes."""
    import multiprocessing as mp

    out = []
    pool = ProcessPoolExecutor(jobs, mp_context=mp.get_context("fork")) if jobs > 1 else None
    try:
        results = pool.map(compile_problem, problems) if pool else map(compile_problem,
                                                                         problems)
        for rows in results:
            out += rows
            if on_rows:
                on_rows(rows)
    finally:
        if pool:
            pool.shutdown()
    return out


# ----------------------------------------------------------------------------- report


def write_report(rows: list[dict], path: str | Path) -> Path:
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(pd.DataFrame(rows), triton.__version__))
    return path


def _tile(r) -> str:
    """BMxBN wWARPS sSTAGES of a row (a namedtuple or a Series)."""
    get = r.__getitem__ if hasattr(r, "__getitem__") and not isinstance(r, tuple) else \
        lambda k: getattr(r, k)
    return (f"{int(get('block_m'))}x{int(get('block_n'))} w{int(get('num_warps'))} "
            f"s{int(get('num_stages'))}")


def _verdict(r) -> str:
    why = [w for w, bad in (("spills", r.spill_stores + r.spill_loads > 0),
                            ("over smem", not r.fits)) if bad]
    return ", ".join(why) or "ok"


KERNEL_NAMES = {("fwd", "fwd"): "forward", ("bwd-dkdv", "bwd"): "dK/dV, atomic dQ (default)",
                ("bwd-dkdv", "bwd-det"): "dK/dV, deterministic",
                ("bwd-dq", "bwd-det"): "dQ (deterministic)",
                ("bwd-preprocess", "bwd"): "backward preprocess (delta = rowsum(dO * O))"}


def render(df, triton_version: str) -> str:
    """The Markdown report: the tuned tiles of every kernel (one row per dtype, head dim
    and tile; registers per feature variant), pad/unpad, and the candidates if swept."""
    tuned = df[~df.candidate] if "candidate" in df else df
    out = [HEADER.format(triton=triton_version, regs=REGISTERS_PER_SM,
                         smem=SMEM_PER_SM // 1024, block=SMEM_PER_BLOCK // 1024)]
    bad = tuned[(tuned.spill_stores + tuned.spill_loads > 0) | ~tuned.fits]
    first = tuned.drop_duplicates("hash")  # each binary's own compile (later: cache hits)
    # the preprocess kernel is the same binary in both backward passes: shown once
    attn = tuned[(tuned.kernel != "pad-unpad")
                 & ~((tuned.kernel == "bwd-preprocess") & (tuned.pass_ == "bwd-det"))]
    plain = attn[attn.features == "-"]
    causal_same = all(g.hash.nunique() == 1 for _, g in plain.groupby(
        ["kernel", "dtype", "head_dim", "pass_", "block_m", "block_n", "num_warps",
         "num_stages"], dropna=False))
    out += [f"- {tuned.hash.nunique()} distinct binaries from {len(tuned)} compiles; "
            f"**{bad.hash.nunique()} with register spills or over the shared-memory limit**"
            + (": " + ", ".join(sorted({f"{r.kernel} {r.dtype} d{r.head_dim} {_tile(r)} "
                                        f"{r.features}" for r in bad.itertuples()}))
               if len(bad) else "."),
            f"- Compile time on this machine: {tuned.compile_s.sum():.0f} s for all of them"
            + "".join(f"; {name} median {part.compile_s.median():.1f} s per binary"
                      for name, part in (("16-bit", first[first.dtype != "fp32"]),
                                         ("fp32", first[first.dtype == "fp32"]))
                      if len(part)) + " (each autotune key compiles every tile it may "
            "pick: what a GPU run pays before it times anything)."]
    if len(plain):
        out.append("- Causal and non-causal launches compile to "
                   + ("the same binary in every case (the window bounds are run-time "
                      "arguments), so one row stands for both." if causal_same else
                      "different binaries for some kernels: see the rows."))
    out.append("")
    for (kernel, pass_), part in attn.groupby(["kernel", "pass_"], sort=False):
        name = KERNEL_NAMES.get((kernel, pass_), f"{kernel} ({pass_})")
        out += [f"## {name}", "", TABLE_HEAD]
        keys = ["dtype", "head_dim", "block_m", "block_n", "num_warps", "num_stages"]
        for _, g in part.groupby(keys, sort=False, dropna=False):
            base = (g[g.features == "-"] if (g.features == "-").any() else g).iloc[0]
            regs = "/".join(str(int(g[g.features == f].registers.max()))
                            if (g.features == f).any() else "-"
                            for f in FEATURES)
            spills = int((g.spill_stores + g.spill_loads).max())
            worst = g.sort_values("warps_per_sm").iloc[0]
            tile = "-" if pd_isna(base["block_m"]) else _tile(base)
            out.append(f"| {base['dtype']} | {base['head_dim']} | {tile} | {regs} | {spills} | "
                       f"{int(g['stack'].max())} | {g.smem.max() / 1024:.1f} | "
                       f"{'yes' if g.fits.all() else '**no**'} | {int(g.hgmma.max())} | "
                       f"{int(g.hmma.max())} | {int(g.tma.max())} | {int(g.cp_async.max())} | "
                       f"{int(worst['warps_per_sm'])} ({worst['occupancy']:.0%}) | "
                       f"{worst['limited_by']} | {g.compile_s.sum():.1f} |")
        out.append("")
    pad = tuned[tuned.kernel == "pad-unpad"]
    if len(pad):
        out += ["## pad / unpad (row gather)", "",
                "| dtype | columns | regs | spills B | 128-bit loads / stores (SASS) | "
                "warps/SM | bound by |", "|---|---|---|---|---|---|---|"]
        out += [f"| {r.dtype} | {r.n_cols} | {r.registers} | "
                f"{r.spill_stores + r.spill_loads} | {r.ldg128} / {r.stg128} | "
                f"{r.warps_per_sm} ({r.occupancy:.0%}) | {r.limited_by} |"
                for r in pad.itertuples()]
        out.append("")
    cand = df[df.candidate] if "candidate" in df else df.iloc[:0]
    if len(cand):
        out += [CANDIDATES_HEAD]
        for (kernel, dtype, d, features), g in cand.groupby(
                ["kernel", "dtype", "head_dim", "features"], sort=False):
            cells = [f"{_tile(r)}: {r.registers}r {r.smem / 1024:.0f}K "
                     f"{r.warps_per_sm}w {_verdict(r)}" for r in g.itertuples()]
            out.append(f"| {KERNEL_NAMES.get((kernel, g.pass_.iloc[0]), kernel)} | {dtype} "
                       f"| {d} | {features} | {'; '.join(cells)} |")
        out.append("")
    return "\n".join(out)


def pd_isna(x) -> bool:
    return x is None or x != x


HEADER = """# Triton kernels on Hopper (sm_90): static resources

Every Triton kernel of the project compiled for an H100/H200 (sm_90a) on a machine without a
GPU, exactly as the JIT compiles it there: the real launchers run on CPU tensors with a
compile-only driver, and each launch compiles every tile its autotuner may pick
(kernelsuite/harness/hopper.py). Regenerate: `kernelsuite hopper-static` (about 12 minutes
on 2 cores; `--candidates`, 35 more, adds the tiles they were chosen from; `--help`).
triton {triton} with its own ptxas and cuobjdump; every binary compiled cold (an empty triton cache), as
on a fresh GPU machine.

- regs: registers per thread from `cuobjdump --dump-resource-usage`, for the plain / varlen /
  softcap / GQA / ALiBi-with-dropout variants of the launch ("-": the tile is not in that
  variant's list: GQA and ALiBi/dropout launches have lists of their own for some kernels); spills: bytes of spill stores + loads (`ptxas -v`),
  the worst variant; stack: stack frame bytes; smem: dynamic shared memory a block asks for
  (the per-block limit is {block} KB; fits = within it).
- HGMMA / HMMA / TMA / cp.async: instructions in the SASS (`cuobjdump -sass`): Hopper's
  warpgroup tensor-core MMA (wgmma), the older mma.sync, bulk tensor copies
  (UTMALDG/UBLKCP), and Ampere-style async copies (LDGSTS) that Triton pipelines loads with.
- warps/SM: resident warps per SM (of 64) from {regs} registers (allocated per warp in units
  of 256), {smem} KB of shared memory (1 KB reserved per block), 32 blocks; the worst
  variant, and the limit that binds. compile s: seconds to build the row's binaries here.
- Launch shapes: batch 2, seqlen 512, 16 query heads (4 kv heads for GQA), 16-byte aligned
  pointers and strides divisible by 16, as any real model's tensors are, so the JIT
  specialises exactly as it does on the GPU.
"""

TABLE_HEAD = ("| dtype | d | tile (BMxBN, warps, stages) | "
              "regs (plain/varlen/softcap/gqa/alibi+dropout) | "
              "spills B | stack B | smem KB | fits | HGMMA | HMMA | TMA | cp.async | "
              "warps/SM | bound by | compile s |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")

CANDIDATES_HEAD = """## Candidates

Every tile of the grid the tuned lists were chosen from (causal; no features, and GQA for
the dK/dV kernel, whose GQA launches have lists of their own; bf16 stands for both 16-bit
types, whose code differs only in conversions): registers, shared memory, resident warps
per SM and the verdict. A tile is kept only if it has no spills and fits, at
every dtype and feature (the tables above); among those, a few per head dim with distinct
shapes, favouring large tiles (fewer K/V re-reads) and 8 warps where 4 spill.

| kernel | dtype | d | features | tile: regs, smem, warps/SM, verdict |
|---|---|---|---|---|"""


def _count(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return n


def _head_dim(text: str) -> int:
    """A head dim the attention API accepts (the kernels are compiled for no other)."""
    from kernelsuite.attention.api import HEAD_DIM_MAX, HEAD_DIM_MIN

    d = int(text)
    if d % 8 or not HEAD_DIM_MIN <= d <= HEAD_DIM_MAX:
        raise argparse.ArgumentTypeError(f"must be a multiple of 8 in [{HEAD_DIM_MIN}, "
                                         f"{HEAD_DIM_MAX}], got {text!r}")
    return d


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kernelsuite hopper-static", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/report/hopper-static.md")
    parser.add_argument("--json", action="store_true", help="print one JSON row per binary "
                                                            "instead of writing the report")
    parser.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=DTYPES)
    parser.add_argument("--head-dim", nargs="+", type=_head_dim, default=list(HEAD_DIMS))
    parser.add_argument("--no-features", action="store_true",
                        help="skip the varlen / softcap / GQA variants")
    parser.add_argument("--no-padding", action="store_true")
    parser.add_argument("--no-attention", action="store_true")
    parser.add_argument("--candidates", action="store_true",
                        help="also compile the candidate grid the tiles were chosen from "
                             "(bf16 and fp32, about 35 minutes more on 2 cores)")
    parser.add_argument("--jobs", type=_count, default=os.cpu_count() or 1)
    parser.add_argument("--from-json", nargs="+", metavar="FILE",
                        help="write the report from rows saved with --json (no compiling)")
    args = parser.parse_args(argv)
    if args.from_json:
        rows = []
        for f in args.from_json:
            n = 0  # the line being read (0: decoding the file)
            try:
                for n, line in enumerate(Path(f).read_text().splitlines(), 1):
                    rows += [json.loads(line)] if line.strip() else []
            except ValueError as e:  # JSON or UTF-8 errors
                raise ValueError(f"{f}, line {n}: not JSON rows ({e})") from None
        try:
            print(write_report(rows, args.out))
        except (KeyError, AttributeError, TypeError) as e:  # rows of something else
            raise ValueError(f"{args.from_json}: not rows written by --json ({e!r})") from None
        return 0
    problems = [] if args.no_attention else attention_problems(args.dtype, args.head_dim,
                                                                 not args.no_features)
    if not args.no_padding:
        problems += padding_problems(args.dtype)
    if args.candidates:
        problems += candidate_problems([d for d in ("bf16", "fp32") if d in args.dtype],
                                       args.head_dim)
    if not problems:
        parser.error("nothing to compile: every kind is excluded (--no-attention, "
                     "--no-padding, and no --candidates of a bf16 or fp32 --dtype)")
    if not os.environ.get("TRITON_CACHE_DIR"):  # cold compiles, as on a fresh GPU machine
        cache = tempfile.TemporaryDirectory(prefix="kernelsuite-sm90-")
        os.environ["TRITON_CACHE_DIR"] = cache.name
    if args.json:
        sweep(problems, args.jobs,
              lambda rows: [print(json.dumps(r), flush=True) for r in rows])
        return 0
    rows = sweep(problems, args.jobs)
    print(write_report(rows, args.out))
    return 0


if __name__ == "__main__":  # through the CLI, whose errors are one line
    from kernelsuite.cli import main as cli_main

    sys.exit(cli_main(["hopper-static", *sys.argv[1:]]))
