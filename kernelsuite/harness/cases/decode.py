"""Decode benchmark cases (issue 20): one new query token per sequence against a KV cache
of `context` tokens, GQA 32 query heads on 8 kv heads, head_dim 128; float32 on the CPU,
bfloat16 on a GPU (float16 at the tiny size: the Triton interpreter gets bfloat16 dots
wrong).

- ``numba`` / ``triton`` (ours): flash_attn_with_kvcache on a contiguous cache (the
  split-KV kernel of the device);
- ``numba-paged`` / ``triton-paged`` (ours): the same cache in pages of 16 tokens,
  scattered (a random permutation of the blocks), through block_table;
- ``sdpa`` (alternative): torch's scaled_dot_product_attention over the same (unpaged)
  cache, enable_gqa (on a GPU torch picks its backend: flash where it takes GQA);
- ``flex`` (alternative): FlexAttention compiled by torch.compile (_flex.py) over the same
  cache, where it runs; the warm-up call compiles;
- ``torch`` (the reference): kernelsuite's reference path (the cache gathered, then plain
  attention), at contexts up to 4k.

Each call reads the whole cache once (bytes: keys and values), so frac_peak is the KV read
bandwidth as a share of the device's measured copy bandwidth; tokens: the batch (one token
per sequence per call). The new token's k/v are already in the cache (decode's append is a
copy of 2 x batch rows, the same for every implementation). Check: batch 0's output
against the float64 reference.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ..._checks import device_type
from ...attention import flash_attn_with_kvcache, reference
from ..numerics import max_error_of
from ..registry import ALTERNATIVE, OURS, REFERENCE, Area, Case
from ._flex import compiled_flex, flex

HEADS, HEADS_KV, HEAD_DIM, PAGE = 32, 8, 128, 16
# (batch, context) per device type and size
SHAPES = {
    "cpu": {"tiny": [(2, 96)],
            "quick": [(1, 4096), (8, 4096)],
            "all": [(b, c) for b in (1, 8, 32) for c in (1024, 4096, 16384)
                    if b * c <= 8 * 16384]},
    "cuda": {"tiny": [(2, 96)],
             "quick": [(8, 8192), (64, 8192)],
             "all": [(b, c) for b in (1, 8, 64) for c in (1024, 8192, 32768)
                     if b * c <= 64 * 8192]},
}
REFERENCE_MAX_CONTEXT = 4096
IMPLS = {"cpu": ["numba", "numba-paged", "sdpa", "flex", "torch"],
         "cuda": ["triton", "triton-paged", "sdpa", "flex", "torch"]}
ROLES = {"numba": OURS, "numba-paged": OURS, "triton": OURS, "triton-paged": OURS,
         "sdpa": ALTERNATIVE, "flex": ALTERNATIVE, "torch": REFERENCE}


def _inputs(batch, context, device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, context, HEADS_KV, HEAD_DIM)
    k, v = (torch.randn(shape, generator=gen).to(device, dtype) for _ in range(2))
    q = torch.randn(batch, 1, HEADS, HEAD_DIM, generator=gen).to(device, dtype)
    blocks = batch * context // PAGE
    order = torch.randperm(blocks, generator=gen).to(device)
    # block order[i] holds the i-th page of the (batch, context) cache
    k_pages, v_pages = (torch.empty(blocks, PAGE, HEADS_KV, HEAD_DIM, device=device,
                                    dtype=dtype) for _ in range(2))
    k_pages[order], v_pages[order] = (t.reshape(blocks, PAGE, HEADS_KV, HEAD_DIM) for t in (k, v))
    table = order.view(batch, context // PAGE).to(torch.int32)
    seqlens = torch.full((batch,), context, dtype=torch.int32, device=device)
    return SimpleNamespace(q=q, k=k, v=v, k_pages=k_pages, v_pages=v_pages, table=table,
                           seqlens=seqlens)


def _ours(backend):
    def run(x):
        return flash_attn_with_kvcache(x.q, x.k, x.v, cache_seqlens=x.seqlens, backend=backend)
    return run


def _ours_paged(backend):
    def run(x):
        return flash_attn_with_kvcache(x.q, x.k_pages, x.v_pages, cache_seqlens=x.seqlens,
                                       block_table=x.table, backend=backend)
    return run


def _sdpa(x):
    out = F.scaled_dot_product_attention(x.q.transpose(1, 2), x.k.transpose(1, 2),
                                         x.v.transpose(1, 2), enable_gqa=True)
    return out.transpose(1, 2)


def _flex(x):
    return flex(x.q, x.k, x.v)


def _reference(x):
    return flash_attn_with_kvcache(x.q, x.k, x.v, cache_seqlens=x.seqlens, backend="torch")


def _truth(x):
    return reference.flash_attn_func(*(t[:1].cpu().double() for t in (x.q, x.k, x.v)))


def _error(output, want):
    return max_error_of(output[:1].cpu(), want)


def decode_case(batch, context, kind="cpu", dtype=torch.float32) -> Case:
    ours = IMPLS[kind][0]  # numba or triton
    impls = {ours: _ours(ours), f"{ours}-paged": _ours_paged(ours), "sdpa": _sdpa}
    if compiled_flex() is not None:
        impls["flex"] = _flex
    if context <= REFERENCE_MAX_CONTEXT:
        impls["torch"] = _reference
    elsize = torch.finfo(dtype).bits // 8
    kv_bytes = 2 * batch * context * HEADS_KV * HEAD_DIM * elsize
    dtype_name = str(dtype).replace("torch.", "")
    return Case(kernel="decode", name=f"b{batch}-ctx{context}" + (
                    "" if kind == "cpu" else f"-{dtype_name}"),
                params=dict(batch=batch, context=context, heads=HEADS, heads_kv=HEADS_KV,
                            head_dim=HEAD_DIM, dtype=dtype_name, page=PAGE),
                flops=4.0 * batch * HEADS * context * HEAD_DIM, bytes=kv_bytes,
                make_inputs=lambda dev: _inputs(batch, context, dev, dtype), impls=impls,
                tokens=batch, truth=_truth, error=_error, devices=(kind,))


def cases(device: str, size: str) -> list[Case]:
    kind = device_type(device)
    if kind == "cuda":  # bfloat16; the tiny dry run in float16 (see the docstring)
        dtype = torch.float16 if size == "tiny" else torch.bfloat16
        return [decode_case(b, c, "cuda", dtype) for b, c in SHAPES["cuda"][size]]
    return [decode_case(b, c) for b, c in SHAPES["cpu"][size]]


AREA = Area("decode", "one token per sequence against a KV cache: the split-KV kernels "
            "(Numba on the CPU, Triton on a GPU), contiguous and paged, against SDPA and "
            "FlexAttention over the same cache", cases, IMPLS, ROLES)
