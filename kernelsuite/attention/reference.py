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

from . import _dropout
from ._paged import gather_paged
from ._params import alibi_causal, bounded_window


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


def alibi_bias(slopes, seqlen_q: int, seqlen_k: int, causal_form: bool) -> torch.Tensor:
    """ALiBi as flash-attn's kernels add it to the (scaled, softcapped) scores, shape
    (..., seqlen_q, seqlen_k) for slopes (...): causal_form adds slope * col; otherwise it
    subtracts slope * |row + seqlen_k - seqlen_q - col| (distance to the aligned diagonal).
    The two differ by a per-row constant, so only the log-sum-exp tells them apart."""
    device = slopes.device
    col = torch.arange(seqlen_k, device=device, dtype=slopes.dtype)
    if causal_form:
        return slopes[..., None, None] * col.expand(seqlen_q, seqlen_k)
    pos = torch.arange(seqlen_q, device=device, dtype=slopes.dtype)[:, None] + (seqlen_k - seqlen_q)
    return -slopes[..., None, None] * (pos - col).abs()


def alibi_causal_form(causal, window_size, max_seqlen_q: int, max_seqlen_k: int) -> bool:
    """Which ALiBi form a call uses, decided on its window bounded by the call's longest
    sequences (see _params.alibi_causal)."""
    left, right = bounded_window(window_size, max_seqlen_q, max_seqlen_k)
    return alibi_causal(left, 0 if causal else right)


def _attention(q, k, v, softmax_scale, causal, window_size, softcap, slopes, alibi_causal,
               dropout, rows, sinks, want_probs):
    """The forward on a dense batch: q (batch, seqlen_q, heads_q, d); k, v (batch, seqlen_k,
    heads_kv, d); slopes None or (batch or 1, heads_q) float; dropout None or (dropout_p,
    seed, offset); rows (batch, seqlen_q) the queries' token rows (the dropout counter);
    sinks None or (heads_q,). Returns (out, lse, S_dmask or None)."""
    batch, seqlen_q, heads_q, head_dim = q.shape
    seqlen_k, heads_kv = k.shape[1], k.shape[2]
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
    if slopes is not None:
        scores = scores + alibi_bias(slopes.to(acc_dtype), seqlen_q, seqlen_k, alibi_causal)
    scores = scores.masked_fill(~mask, float("-inf"))

    # Softmax written out so that rows that see no key give p = 0, lse = -inf and finite
    # gradients (torch.softmax would give NaN). The max is a constant shift: detach it.
    if seqlen_k > 0:
        row_max = scores.amax(dim=-1, keepdim=True).detach()
    else:  # amax refuses an empty dim
        row_max = scores.new_full((*scores.shape[:-1], 1), float("-inf"))
    # rows that see no key (max -inf) shift by 0; a NaN or +inf max makes the row NaN (IEEE)
    score_max = torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max)
    empty = ~mask.any(dim=-1, keepdim=True)
    if sinks is None:
        row_max = score_max
        e = torch.exp(scores - row_max)
        denom = e.sum(dim=-1, keepdim=True)
        # a row that sees no key gives 0 (flash-attn); one whose visible scores are all -inf
        # (an Inf in q or k) gives 0 / 0 = NaN, as IEEE and SDPA do
        denom = torch.where(empty, torch.ones_like(denom), denom)
    else:  # one more logit per head, whose value is 0: it only takes probability mass
        sink = sinks.to(acc_dtype)[None, :, None, None]
        row_max = torch.maximum(row_max, sink.detach())
        e = torch.exp(scores - row_max)
        denom = e.sum(dim=-1, keepdim=True) + torch.exp(sink - row_max)
        empty = torch.zeros_like(empty)
    p = (e / denom).masked_fill(~mask, 0)  # exactly 0 where hidden, even in a NaN row
    probs = None
    if dropout is not None:
        dropout_p, seed, offset = dropout
        heads = torch.arange(heads_q, device=q.device)[None, :, None, None]
        cols = torch.arange(seqlen_k, device=q.device)
        keep = _dropout.keep_mask(seed, offset, dropout_p, heads, rows[:, None, :, None], cols)
        p = torch.where(keep, p / (1 - dropout_p), 0)
        if want_probs:  # flash-attn's S_dmask: exp(s - row max), negated where dropped
            unnorm = torch.exp(scores - score_max).masked_fill(~mask, 0).detach()
            probs = torch.where(keep, unnorm, -unnorm)
    out = _PV.apply(p.to(vh.dtype), vh, mask).transpose(1, 2).to(q.dtype)
    lse = (row_max + torch.log(denom)).masked_fill(empty, float("-inf")).squeeze(-1)
    return out, lse.to(acc_dtype), probs


def _slopes(alibi_slopes, batch):
    """(batch or 1, heads) slopes, or None."""
    if alibi_slopes is None:
        return None
    return alibi_slopes if alibi_slopes.dim() == 2 else alibi_slopes[None]


def _dropout_state(dropout_p, philox, device):
    """None without dropout, else (dropout_p, seed, offset): the given philox (seed, offset)
    or a fresh one from torch's generator."""
    if not dropout_p:
        return None
    return (dropout_p, *(philox if philox is not None else _dropout.philox_state(device)))


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                    return_attn_probs=False, *, return_lse=False, sinks=None, philox=None):
    """q (batch, seqlen_q, heads_q, d); k, v (batch, seqlen_k, heads_kv, d); the signature
    of kernelsuite.attention.flash_attn_func (flash-attn 2.8's).

    Returns out (like q); the float32 log-sum-exp (batch, heads_q, seqlen_q) with it when
    return_lse, and (out, lse, S_dmask) when return_attn_probs (S_dmask (batch, heads_q,
    seqlen_q, seqlen_k) with dropout, else None). Dropout draws its (seed, offset) from
    torch's generator as the kernels do (see _dropout), unless philox=(seed, offset) is
    given; so under one torch.manual_seed, this and a kernel drop the same entries.
    alibi_slopes (heads_q,) or (batch, heads_q); sinks (heads_q,) logits (see the public
    function). ``deterministic`` is accepted for signature parity; this code is always
    deterministic. Arguments are not checked further: the public functions do.
    """
    batch, seqlen_q, _, head_dim = q.shape
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(head_dim)
    rows = torch.arange(batch * seqlen_q, device=q.device).view(batch, seqlen_q)
    out, lse, probs = _attention(
        q, k, v, softmax_scale, causal, window_size, softcap, _slopes(alibi_slopes, batch),
        alibi_causal_form(causal, window_size, seqlen_q, k.shape[1]),
        _dropout_state(dropout_p, philox, q.device), rows, sinks, return_attn_probs)
    if return_attn_probs:
        return out, lse, probs
    return (out, lse) if return_lse else out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False,
                           window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None, *,
                           return_lse=False, sinks=None, philox=None):
    """q (total_q, heads_q, d); k, v (total_k, heads_kv, d); int32 cu_seqlens of length batch+1.

    Each sequence is attended to on its own by the code of :func:`flash_attn_func`, with
    the call's one dropout (seed, offset). Returns out (like q), and the float32
    log-sum-exp (heads_q, total_q) when return_lse; (out, lse, S_dmask) when
    return_attn_probs (S_dmask (batch, heads_q, max_seqlen_q, max_seqlen_k), zero past each
    sequence, with dropout; else None). With block_table, k and v are paged caches
    (num_blocks, page_size, heads_kv, d), gathered into tokens first.
    """
    if block_table is not None:
        k, v = gather_paged(k, v, block_table, cu_seqlens_k, k.device)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
    batch = len(cq) - 1
    slopes = _slopes(alibi_slopes, batch)
    alibi_causal = alibi_causal_form(causal, window_size, max_seqlen_q, max_seqlen_k)
    dropout = _dropout_state(dropout_p, philox, q.device)
    outs, lses, probs = [], [], None
    if return_attn_probs and dropout is not None:
        probs = q.new_zeros((batch, q.shape[1], max_seqlen_q, max_seqlen_k),
                            dtype=lse_dtype(q.dtype))
    for b in range(batch):
        rows = torch.arange(cq[b], cq[b + 1], device=q.device)[None]
        o, lse, s = _attention(q[None, cq[b]:cq[b + 1]], k[None, ck[b]:ck[b + 1]],
                               v[None, ck[b]:ck[b + 1]], softmax_scale, causal, window_size,
                               softcap, None if slopes is None else slopes[b % len(slopes)][None],
                               alibi_causal, dropout, rows, sinks, probs is not None)
        outs.append(o[0])
        lses.append(lse[0])
        if probs is not None:
            probs[b, :, :s.shape[2], :s.shape[3]] = s[0]
    out = torch.cat(outs, dim=0)
    if return_attn_probs:
        return out, torch.cat(lses, dim=-1), probs
    return (out, torch.cat(lses, dim=-1)) if return_lse else out
