"""Attention benchmark cases: our kernels against every torch SDPA backend available.

GPU sweep (issue 2): batch * seqlen = 16k tokens, heads * head_dim = 2048, head_dim 64 and
128, causal and not, seqlen 512 to 16k, bf16 and fp16, forward and forward + backward.
CPU sweep (issue 3): float32, batch 1, 8 heads, head_dim 64 and 128, seqlen 512 to 4096,
causal and not, forward and forward + backward: the Numba kernels against torch SDPA, and
in the forward FlexAttention compiled by torch.compile (_flex.py; it has no CPU backward).
Tiny (dry runs): float16, batch 1, 2 heads, head_dim 64, seqlen 80, causal, every mode.
Modes: fwd (forward), bwd (backward alone: the forward runs once, untimed, and its graph is
kept) and fwd_bwd (both, as a training step runs them). Each output is checked against
the reference in float64 on batch 0, head 0 (heads are independent, so the slice is exact);
every implementation gets the same inputs (seed 0), so their errors compare.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from functools import lru_cache
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ...attention import flash_attn_func, reference
from ..numerics import max_error_of
from ..registry import ALTERNATIVE, OURS, REFERENCE, Area, Case
from ._flex import compiled_flex, flex

# FLOPs of the backward relative to the forward (DESIGN.md)
BWD_FACTOR = 2.5


def visible_pairs(seqlen_q, seqlen_k, causal=False, window_size=(-1, -1)) -> int:
    """Number of (query, key) pairs attended (flash-attn masks, bottom-right aligned)."""
    left, right = window_size
    if causal:
        right = 0
    off = seqlen_k - seqlen_q
    total = 0
    for i in range(seqlen_q):
        lo = 0 if left < 0 else max(0, i + off - left)
        hi = seqlen_k - 1 if right < 0 else min(seqlen_k - 1, i + off + right)
        total += max(0, hi - lo + 1)
    return total


def attention_flops(batch, heads, seqlen_q, seqlen_k, head_dim, causal=False,
                    window_size=(-1, -1), backward=False) -> float:
    fwd = 4.0 * batch * heads * visible_pairs(seqlen_q, seqlen_k, causal, window_size) * head_dim
    return fwd * (1 + BWD_FACTOR) if backward else fwd


def attention_bytes(batch, heads, seqlen_q, seqlen_k, head_dim, elsize, backward=False):
    """Each input read once and each output written once (q, k, v -> out, lse [-> grads])."""
    q = batch * seqlen_q * heads * head_dim * elsize
    kv = 2 * batch * seqlen_k * heads * head_dim * elsize
    lse = batch * heads * seqlen_q * 4
    fwd = q + kv + q + lse
    if not backward:
        return fwd
    # backward reads q, k, v, out, dout, lse and writes dq, dk, dv
    return fwd + (3 * q + kv + lse) + (q + kv)


def _ours(backend):
    def run(x):
        return flash_attn_func(x.q, x.k, x.v, causal=x.causal, backend=backend)
    return run


def _sdpa(backend):
    from torch.nn.attention import sdpa_kernel

    def run(x):
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(x.q.transpose(1, 2), x.k.transpose(1, 2),
                                                 x.v.transpose(1, 2), is_causal=x.causal)
        return out.transpose(1, 2)
    return run


def _with_backward(fwd):
    def run(x):
        out = fwd(x)
        return torch.autograd.grad(out, (x.q, x.k, x.v), x.dout)
    return run


def _backward_only(fwd):
    def run(x):
        if not hasattr(x, "out"):  # the first (warm-up) call runs the forward, once
            x.out = fwd(x)
        return torch.autograd.grad(x.out, (x.q, x.k, x.v), x.dout, retain_graph=True)
    return run


def _head0(t):
    return t[:1, :, :1]


def truth(x, backward):
    """float64 reference output (and q, k, v gradients) on batch 0, head 0."""
    q, k, v = (_head0(t).detach().double().requires_grad_(backward) for t in (x.q, x.k, x.v))
    out = reference.flash_attn_func(q, k, v, causal=x.causal)
    return torch.autograd.grad(out, (q, k, v), _head0(x.dout).double()) if backward else out


def error(output, want):
    """Max abs error of an implementation's output (or gradients) against truth()."""
    got = tuple(map(_head0, output)) if isinstance(output, tuple) else _head0(output)
    return max_error_of(got, want)


# SDPA backends by name; flash and math are the ones torch has on CPU
SDPA = {"cpu": ("sdpa_flash", "sdpa_math"),
        "cuda": ("sdpa_flash", "sdpa_cudnn", "sdpa_efficient", "sdpa_math")}
IMPLS = {"cpu": ["numba", "torch", *SDPA["cpu"], "flex"],
         "cuda": ["triton", "torch", *SDPA["cuda"]]}
ROLES = {"numba": OURS, "triton": OURS, "torch": REFERENCE, "flex": ALTERNATIVE,
         **{name: ALTERNATIVE for name in SDPA["cuda"]}}


def _flex(x):
    return flex(x.q, x.k, x.v, causal=x.causal)


def _backend(name):
    from torch.nn.attention import SDPBackend

    return {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
            "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION, "sdpa_math": SDPBackend.MATH}[name]


@lru_cache(maxsize=None)
def _sdpa_works(name, device, dtype) -> bool:
    """SDPA backends differ by build, GPU and dtype: try each once on a tiny problem."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        return False  # cases for a GPU, listed on a machine without one (asv discovery)
    x = SimpleNamespace(q=torch.randn(1, 128, 2, 64, device=device, dtype=dtype), causal=True)
    x.k = x.v = x.q
    try:
        _sdpa(_backend(name))(x)
        return True
    except RuntimeError:
        return False


def implementations(device, dtype, reference_fits):
    """Ours (Triton on CUDA, Numba on CPU), the reference and SDPA's math backend where their
    O(seqlen^2) memory fits, and every other SDPA backend that runs here."""
    kind = torch.device(device).type
    ours = IMPLS[kind][0]
    impls = {ours: _ours(ours)}
    if reference_fits:
        impls["torch"] = _ours("torch")
    for name in SDPA[kind]:
        if name == "sdpa_math" and not reference_fits:
            continue
        if _sdpa_works(name, device, dtype):
            impls[name] = _sdpa(_backend(name))
    return impls


MODES = ("fwd", "bwd", "fwd_bwd")


def make_case(device, batch, seqlen, heads, head_dim, causal, dtype, mode,
              reference_budget_bytes):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    backward = mode != "fwd"
    dtype_name = str(dtype).replace("torch.", "")
    name = (f"{mode}-{dtype_name}-{'causal' if causal else 'full'}-d{head_dim}-s{seqlen}"
            f"-b{batch}h{heads}")
    # the reference materialises float32 scores, probabilities and their gradients
    reference_fits = batch * heads * seqlen * seqlen * 4 * (6 if backward else 3) \
        <= reference_budget_bytes
    impls = implementations(device, dtype, reference_fits)
    if torch.device(device).type == "cpu" and not backward and compiled_flex() is not None:
        impls["flex"] = _flex  # forward only: FlexAttention has no CPU backward
    if backward:
        wrap = _with_backward if mode == "fwd_bwd" else _backward_only
        impls = {k: wrap(fn) for k, fn in impls.items()}

    def make_inputs(device):
        # the same inputs for every implementation, so that their errors compare
        g = torch.Generator(device=device).manual_seed(0)
        shape = (batch, seqlen, heads, head_dim)
        x = SimpleNamespace(causal=causal)
        for t in ("q", "k", "v"):
            setattr(x, t, torch.randn(shape, device=device, dtype=dtype, generator=g,
                                      requires_grad=backward))
        x.dout = torch.randn(shape, device=device, dtype=dtype, generator=g)
        return x

    elsize = torch.finfo(dtype).bits // 8
    flops = attention_flops(batch, heads, seqlen, seqlen, head_dim, causal, backward=backward)
    nbytes = attention_bytes(batch, heads, seqlen, seqlen, head_dim, elsize, backward)
    if mode == "bwd":  # the backward's share of both
        flops -= attention_flops(batch, heads, seqlen, seqlen, head_dim, causal)
        nbytes -= attention_bytes(batch, heads, seqlen, seqlen, head_dim, elsize)
    return Case(
        kernel="attention", name=name,
        params=dict(mode=mode, dtype=dtype_name, causal=causal, head_dim=head_dim,
                    seqlen=seqlen, batch=batch, heads=heads),
        flops=flops, bytes=nbytes, make_inputs=make_inputs, impls=impls,
        truth=lambda x: truth(x, backward), error=error)


def cases(device: str, size: str) -> list[Case]:
    out = []
    cuda = torch.device(device).type == "cuda"
    if size == "tiny":  # float16: the interpreter computes bfloat16 dots wrongly
        return [make_case(device, 1, 80, 2, 64, True, torch.float16, mode, 2**30)
                for mode in MODES]
    quick = size == "quick"
    if cuda:
        tokens, hidden, budget = 16384, 2048, 8 * 2**30
        dtypes = [torch.bfloat16] if quick else [torch.bfloat16, torch.float16]
        head_dims = [128] if quick else [64, 128]
        seqlens = [1024, 4096, 16384] if quick else [512, 1024, 2048, 4096, 8192, 16384]
    else:
        dtypes = [torch.float32]
        head_dims = [64] if quick else [64, 128]
        seqlens = [512, 2048] if quick else [512, 1024, 2048, 4096]
    for mode in MODES:
        for dtype in dtypes:
            for head_dim in head_dims:
                for causal in (False, True):
                    for seqlen in seqlens:
                        if cuda:
                            batch, heads = tokens // seqlen, hidden // head_dim
                        else:
                            batch, heads, budget = 1, 8, 2**30
                        out.append(make_case(device, batch, seqlen, heads, head_dim, causal,
                                             dtype, mode, budget))
    return out


# A fresh process: imports, then time the first Numba forward + backward (float32, causal),
# called directly: the API's first call also pays torch's one-time custom-op setup (~1.5 s).
_FIRST_CALL = """
import time, torch
from kernelsuite.attention import numba_flash as nf
q = torch.randn(1, 256, 2, 64)
args = (None, None, 256, 256, 0.125, -1, 0, 0.0)
t0 = time.perf_counter()
out, lse = nf.forward(q, q, q, *args)
nf.backward(q, None, q, q, q, out, lse, *args, False)
print(time.perf_counter() - t0)
"""


def numba_first_call_seconds() -> tuple[float, float]:
    """(cold, warm): the first Numba forward + backward in a new process with an empty
    compilation cache (everything is compiled), then in another process that finds the
    cache the first one wrote (cache=True: loading, no compiling)."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        return tuple(float(subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env,
                                          check=True, capture_output=True, text=True
                                          ).stdout.split()[-1]) for _ in range(2))


def notes(device: str) -> list[str]:
    if torch.device(device).type != "cpu":
        return []
    cold, warm = numba_first_call_seconds()
    return [f"Numba first call (forward + backward, float32) in a new process: {cold:.1f} s "
            f"with an empty cache (JIT compile), {warm:.2f} s once the cache is written."]


AREA = Area("attention", "flash attention forward/backward: Triton (CUDA) or Numba (CPU) "
            "against the PyTorch reference and every torch SDPA backend", cases, IMPLS, ROLES,
            notes=notes)
