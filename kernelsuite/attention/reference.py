"""Plain PyTorch attention: the ground truth every attention kernel is checked against.

Same signatures as the public functions in ``kernelsuite.attention`` (minus ``backend``).
It materialises the (seqlen_q, seqlen_k) score matrix, so it is meant for checking and for
small problems. Run it on float64 inputs for ground truth; run it in float16/bfloat16 to get
the error a straightforward low-precision implementation makes (matmuls in the input dtype,
softmax in float32). It never imports a kernel.
"""

from __future__ import annotations

import math

import torch

from ._params import bounded_window, check_unsupported


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The log-sum-exp is float32 (flash-attn), float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def visible_mask(seqlen_q: int, seqlen_k: int, causal: bool, window_size, device=None) -> torch.Tensor:
    """Bool (seqlen_q, seqlen_k): True where query i may attend to key j.

    flash-attn semantics: the diagonal is aligned bottom-right, i.e. query i sits at key
    position i + seqlen_k - seqlen_q. window_size=(left, right) keeps keys in
    [pos - left, pos + right] (-1 = unbounded); causal forces right = 0.
    """
    left, right = bounded_window(window_size, seqlen_q, seqlen_k)
    if causal:
        right = 0
    pos = torch.arange(seqlen_q, device=device)[:, None] + (seqlen_k - seqlen_q)
    j = torch.arange(seqlen_k, device=device)[None, :]
    mask = torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device)
    if left >= 0:
        mask &= j >= pos - left
    if right >= 0:
        mask &= j <= pos + right
    return mask


def _qk(qh, kh, mask):
    """q @ k^T (..., m, n); with a bool (m, n) mask, summed pair by pair over visible
    (query, key) pairs only, so a non-finite value of a hidden pair cannot leak (forward or
    backward, through 0 * NaN)."""
    if mask is None:
        return torch.matmul(qh, kh.transpose(-1, -2))
    keep = mask[:, :, None]
    return (torch.where(keep, qh[..., :, None, :], 0)
            * torch.where(keep, kh[..., None, :, :], 0)).sum(-1)


def _masked_mm(a, b, mask):
    """a @ b (..., m, e) with a (..., m, n), b (..., n, e), counting a[i, j] * b[j] only where
    mask[i, j]: memory O(m * n * e)."""
    keep = mask[:, :, None]
    return (torch.where(keep, a[..., None], 0)
            * torch.where(keep, b[..., None, :, :], 0)).sum(-2)


def _finite(*tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class _PV(torch.autograd.Function):
    """p @ v, and its gradients, over visible (query, key) pairs only (p is 0 elsewhere).

    A matmul is exact while everything is finite. Otherwise 0 * NaN would carry a NaN or
    Inf of v (forward, and dp in the backward) or of the incoming gradient (dv) to pairs
    that cannot see each other: those products are then formed over visible pairs only.
    """

    @staticmethod
    def forward(ctx, p, vh, mask):
        ctx.save_for_backward(p, vh, mask)
        if _finite(vh):
            return torch.matmul(p, vh)
        return _masked_mm(p, vh, mask)

    @staticmethod
    def backward(ctx, g):
        p, vh, mask = ctx.saved_tensors
        dp = torch.matmul(g, vh.transpose(-1, -2)) if _finite(g, vh) else _qk(g, vh, mask)
        if _finite(g):
            dv = torch.matmul(p.transpose(-1, -2), g)
        else:
            dv = _masked_mm(p.transpose(-1, -2), g, mask.T)
        return dp.masked_fill(~mask, 0), dv, None


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                    return_attn_probs=False, *, return_lse=False):
    """q (batch, seqlen_q, heads_q, d); k, v (batch, seqlen_k, heads_kv, d); the signature
    of kernelsuite.attention.flash_attn_func (flash-attn 2.8's).

    Returns out (like q); the float32 log-sum-exp (batch, heads_q, seqlen_q) with it when
    return_lse, and (out, lse, None) when return_attn_probs. dropout_p must be 0 and
    alibi_slopes None for now. ``deterministic`` is accepted for signature parity; this code
    is always deterministic. Arguments are not checked further: the public functions do.
    """
    check_unsupported(dropout_p, alibi_slopes)
    batch, seqlen_q, heads_q, head_dim = q.shape
    seqlen_k, heads_kv = k.shape[1], k.shape[2]
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(head_dim)
    group = heads_q // heads_kv
    # (batch, heads, seqlen, d); GQA by repeating kv heads, so autograd sums their gradients
    qh = q.transpose(1, 2)
    kh = k.transpose(1, 2).repeat_interleave(group, dim=1)
    vh = v.transpose(1, 2).repeat_interleave(group, dim=1)

    acc_dtype = lse_dtype(q.dtype)
    mask = visible_mask(seqlen_q, seqlen_k, causal, window_size, q.device)
    # A NaN or Inf must reach exactly the rows (and gradients) that see it: a matmul would
    # spread it through the zeros of hidden pairs (0 * NaN), so then the products are
    # formed pair by pair over visible pairs only (memory O(seqlen_q * seqlen_k * d)).
    scores = _qk(qh, kh, None if _finite(q, k) else mask).to(acc_dtype)
    scores = scores * softmax_scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~mask, float("-inf"))

    # Softmax written out so that rows that see no key give p = 0, lse = -inf and finite
    # gradients (torch.softmax would give NaN). The max is a constant shift: detach it.
    if seqlen_k > 0:
        row_max = scores.amax(dim=-1, keepdim=True).detach()
    else:  # amax refuses an empty dim
        row_max = scores.new_full((*scores.shape[:-1], 1), float("-inf"))
    # rows that see no key (max -inf) shift by 0; a NaN or +inf max makes the row NaN (IEEE)
    row_max = torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max)
    e = torch.exp(scores - row_max)
    denom = e.sum(dim=-1, keepdim=True)
    # a row that sees no key gives 0 (flash-attn); one whose visible scores are all -inf
    # (an Inf in q or k) gives 0 / 0 = NaN, as IEEE and SDPA do
    empty = ~mask.any(dim=-1, keepdim=True)
    denom = torch.where(empty, torch.ones_like(denom), denom)
    p = (e / denom).masked_fill(~mask, 0)  # exactly 0 where hidden, even in a NaN row
    out = _PV.apply(p.to(vh.dtype), vh, mask).transpose(1, 2).to(q.dtype)
    if not (return_lse or return_attn_probs):
        return out
    lse = (row_max + torch.log(denom)).masked_fill(empty, float("-inf")).squeeze(-1)
    return (out, lse.to(acc_dtype)) + ((None,) if return_attn_probs else ())


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False,
                           window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None, *,
                           return_lse=False):
    """q (total_q, heads_q, d); k, v (total_k, heads_kv, d); int32 cu_seqlens of length batch+1.

    Each sequence is attended to on its own with :func:`flash_attn_func`. Returns out (like
    q), and the float32 log-sum-exp (heads_q, total_q) when return_lse (and None after it
    when return_attn_probs). block_table is not supported yet.
    """
    if block_table is not None:
        raise NotImplementedError("block_table: paged KV caches are not supported yet")
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
    outs, lses = [], []
    for b in range(len(cq) - 1):
        o, lse = flash_attn_func(q[None, cq[b]:cq[b + 1]], k[None, ck[b]:ck[b + 1]],
                                 v[None, ck[b]:ck[b + 1]], dropout_p,
                                 softmax_scale=softmax_scale, causal=causal,
                                 window_size=window_size, softcap=softcap,
                                 alibi_slopes=alibi_slopes, return_lse=True)
        outs.append(o[0])
        lses.append(lse[0])
    out = torch.cat(outs, dim=0)
    if not (return_lse or return_attn_probs):
        return out
    return (out, torch.cat(lses, dim=-1)) + ((None,) if return_attn_probs else ())
