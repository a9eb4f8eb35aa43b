"""What the split-KV decode kernels share (numba_decode.py, triton_decode.py): how many
slices a sequence's cache is cut into, and how the slices' partial results merge."""

from __future__ import annotations

import math

import torch

from ._params import LN2

BLOCK = 64  # keys per score tile, and the granularity of a split


def choose_splits(num_splits: int, batch: int, heads_kv: int, longest: int,
                  workers: int) -> int:
    """num_splits if given (at most one per block of keys), else enough (sequence, kv head,
    split) tasks for twice the workers (threads, or a GPU's SMs)."""
    blocks = max(1, math.ceil(longest / BLOCK))
    if num_splits:
        return max(1, min(num_splits, blocks))
    return max(1, min(blocks, math.ceil(2 * workers / max(1, batch * heads_kv))))


def merge(o_part, lse_part):
    """The splits' outputs o_part (splits, B, H, Sq, D), each normalised over its own keys,
    weighted by exp(lse_s - lse) with lse_part (splits, B, H, Sq) in log2 units. Returns
    (out (B, Sq, H, D), lse (B, H, Sq) in natural-log units; -inf where no split saw a
    key, and out 0 there)."""
    lse = torch.logsumexp(lse_part * LN2, dim=0)
    weight = torch.nan_to_num(torch.exp(lse_part * LN2 - lse), nan=0.0)  # -inf - -inf
    out = (weight[..., None] * o_part).sum(0)  # (B, H, Sq, D)
    return out.transpose(1, 2), lse
