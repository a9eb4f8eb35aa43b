"""What the split-KV decode kernels share (numba_decode.py, triton_decode.py): how many
slices a sequence's cache is cut into, the buffers of the slices' partial results, and how
those merge."""

from __future__ import annotations

import math

import torch

from ._params import LN2
from .reference import lse_dtype

BLOCK = 64  # keys per score tile, and the granularity of a split


def choose_splits(num_splits: int, batch: int, heads_kv: int, longest: int,
                  workers: int) -> int:
    """num_splits if given (at most one per block of keys), else enough (sequence, kv head,
    split) tasks for twice the workers (threads, or a GPU's SMs)."""
    blocks = max(1, math.ceil(longest / BLOCK))
    if num_splits:
        return max(1, min(num_splits, blocks))
    return max(1, min(blocks, math.ceil(2 * workers / max(1, batch * heads_kv))))


def partials(q, heads_kv, ends, starts, num_splits, workers, dtype):
    """(splits, o_part (splits, B, H, Sq, D), lse_part (splits, B, H, Sq)) for q (B, Sq, H,
    D): the split count (choose_splits over the longest visible range ends - starts) and
    empty buffers of dtype for the kernels' partial results."""
    batch, sq, heads, d = q.shape
    longest = int((ends - starts).max()) if batch else 0
    splits = choose_splits(num_splits, batch, heads_kv, longest, workers)
    o_part = torch.empty((splits, batch, heads, sq, d), dtype=dtype, device=q.device)
    lse_part = torch.empty((splits, batch, heads, sq), dtype=dtype, device=q.device)
    return splits, o_part, lse_part


def merge(o_part, lse_part, dtype):
    """The splits' outputs o_part (splits, B, H, Sq, D), each normalised over its own keys,
    weighted by exp(lse_s - lse) with lse_part (splits, B, H, Sq) in log2 units. Returns
    (out (B, Sq, H, D) in dtype (q's), lse (B, H, Sq) in natural-log units, in lse_dtype;
    -inf where no split saw a key, and out 0 there)."""
    lse = torch.logsumexp(lse_part * LN2, dim=0)
    weight = torch.nan_to_num(torch.exp(lse_part * LN2 - lse), nan=0.0)  # -inf - -inf
    out = (weight[..., None] * o_part).sum(0)  # (B, H, Sq, D)
    return out.transpose(1, 2).to(dtype), lse.to(lse_dtype(dtype))
