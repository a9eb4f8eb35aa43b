"""Decode benchmark cases (issue 20): one new query token per sequence against a KV cache
of `context` tokens, GQA 32 query heads on 8 kv heads, head_dim 128, float32 on the CPU.

- ``numba`` (ours): flash_attn_with_kvcache on a contiguous cache (the split-KV kernel);
- ``numba-paged`` (ours): the same cache in pages of 16 tokens, scattered (a random
  permutation of the blocks), through block_table;
- ``sdpa`` (alternative): torch's scaled_dot_product_attention over the same (unpaged)
  cache, enable_gqa;
- ``flex`` (alternative): FlexAttention compiled by torch.compile (_flex.py) over the same
  cache, where it runs; the warm-up call compiles;
- ``torch`` (the reference): kernelsuite's reference path (the cache gathered, then plain
  attention), at contexts up to 4k.

Each call reads the whole cache once (bytes: keys and values), so frac_peak is the KV read
bandwidth as a share of this machine's measured memcpy; tokens: the batch (one token per
sequence per call). The new token's k/v are already in the cache (decode's append is a
copy of 2 x batch rows, the same for every implementation). Check: batch 0's output
against the float64 reference. GPU cases come with the Triton split-KV kernel.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ...attention import flash_attn_with_kvcache, reference
from ..numerics import max_error_of
from ..registry import ALTERNATIVE, OURS, REFERENCE, Area, Case
from ._flex import compiled_flex, flex

HEADS, HEADS_KV, HEAD_DIM, PAGE = 32, 8, 128, 16
# (batch, context) per size
SHAPES = {"tiny": [(2, 96)],
          "quick": [(1, 4096), (8, 4096)],
          "all": [(b, c) for b in (1, 8, 32) for c in (1024, 4096, 16384)
                  if b * c <= 8 * 16384]}
REFERENCE_MAX_CONTEXT = 4096
IMPLS = ["numba", "numba-paged", "sdpa", "flex", "torch"]
ROLES = {"numba": OURS, "numba-paged": OURS, "sdpa": ALTERNATIVE, "flex": ALTERNATIVE,
         "torch": REFERENCE}


def _inputs(batch, context, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, context, HEADS_KV, HEAD_DIM)
    k, v = (torch.randn(shape, generator=gen) for _ in range(2))
    q = torch.randn(batch, 1, HEADS, HEAD_DIM, generator=gen)
    blocks = batch * context // PAGE
    order = torch.randperm(blocks, generator=gen)
    # block order[i] holds the i-th page of the (batch, context) cache
    k_pages, v_pages = (torch.empty(blocks, PAGE, HEADS_KV, HEAD_DIM) for _ in range(2))
    k_pages[order], v_pages[order] = (t.reshape(blocks, PAGE, HEADS_KV, HEAD_DIM) for t in (k, v))
    table = order.view(batch, context // PAGE).to(torch.int32)
    seqlens = torch.full((batch,), context, dtype=torch.int32)
    return SimpleNamespace(q=q, k=k, v=v, k_pages=k_pages, v_pages=v_pages, table=table,
                           seqlens=seqlens)


def _ours(x):
    return flash_attn_with_kvcache(x.q, x.k, x.v, cache_seqlens=x.seqlens, backend="numba")


def _ours_paged(x):
    return flash_attn_with_kvcache(x.q, x.k_pages, x.v_pages, cache_seqlens=x.seqlens,
                                   block_table=x.table, backend="numba")


def _sdpa(x):
    out = F.scaled_dot_product_attention(x.q.transpose(1, 2), x.k.transpose(1, 2),
                                         x.v.transpose(1, 2), enable_gqa=True)
    return out.transpose(1, 2)


def _flex(x):
    return flex(x.q, x.k, x.v)


def _reference(x):
    return flash_attn_with_kvcache(x.q, x.k, x.v, cache_seqlens=x.seqlens, backend="torch")


def _truth(x):
    return reference.flash_attn_func(*(t[:1].double() for t in (x.q, x.k, x.v)))


def _error(output, want):
    return max_error_of(output[:1], want)


def decode_case(batch, context) -> Case:
    impls = {"numba": _ours, "numba-paged": _ours_paged, "sdpa": _sdpa}
    if compiled_flex() is not None:
        impls["flex"] = _flex
    if context <= REFERENCE_MAX_CONTEXT:
        impls["torch"] = _reference
    kv_bytes = 2 * batch * context * HEADS_KV * HEAD_DIM * 4
    return Case(kernel="decode", name=f"b{batch}-ctx{context}",
                params=dict(batch=batch, context=context, heads=HEADS, heads_kv=HEADS_KV,
                            head_dim=HEAD_DIM, dtype="float32", page=PAGE),
                flops=4.0 * batch * HEADS * context * HEAD_DIM, bytes=kv_bytes,
                make_inputs=lambda dev: _inputs(batch, context), impls=impls, tokens=batch,
                truth=_truth, error=_error, devices=("cpu",))


def cases(device: str, size: str) -> list[Case]:
    return [decode_case(*shape) for shape in SHAPES[size]]


AREA = Area("decode", "one token per sequence against a KV cache (CPU): the Numba split-KV "
            "kernel, contiguous and paged, against SDPA and FlexAttention over the same "
            "cache", cases, {"cpu": IMPLS}, ROLES)
