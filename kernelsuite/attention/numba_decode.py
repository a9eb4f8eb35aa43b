"""Split-KV decode attention in Numba: a few query rows against a KV cache, read in place.

One task per (sequence, kv head, split): the split is a contiguous slice of the sequence's
visible cache rows [cache_leftpad, cache_seqlens + seqlen_new); the task reads each of its
key and value rows once, for all the query rows of its kv head's GQA group (group x
seqlen_q rows), and keeps an online softmax over them (scores in log2 units, as
numba_flash). A second step merges the splits' partial outputs by their log-sum-exp
(FlashDecoding). Tasks run in parallel over (sequence, kv head, split), so a single long
sequence still uses every thread. The cache is addressed through a page table: a paged
cache directly, a contiguous one as one page per sequence (its row, or cache_batch_idx's).

float32 and float64 caches (others go through the gather path of kvcache.py). Inputs are
assumed valid: kvcache.py checks them.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange

from ._decode import BLOCK, choose_splits, merge
from ._params import LOG2E, AttnParams
from .numba_flash import FASTMATH, _exp2, _set_threads, _tanh
from .reference import lse_dtype


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _decode(q, kc, vc, pages, page, ends, starts, group, win_left, win_right, qk_scale, cap,
            slopes, alibi, splits, o_part, lse_part):
    """q (B, Sq, H, D); kc, vc (N, page, Hkv, D); pages (B, blocks) int64; ends, starts (B,)
    the visible rows [starts[b], ends[b]); windows >= 0 (UNBOUNDED for none), in rows of
    the cache, aligned so that query r sits at row r + ends[b] - Sq. Writes o_part (splits,
    B, H, Sq, D), each split's softmax-normalised output, and lse_part (splits, B, H, Sq) in
    log2 units (-inf for a split with no visible key)."""
    batch, sq, heads, d = q.shape
    heads_kv = kc.shape[2]
    rows = group * sq
    neg_inf = -np.inf
    zero = np.zeros(1, kc.dtype)[0]
    for t in prange(batch * heads_kv * splits):
        split, hk, b = t % splits, (t // splits) % heads_kv, t // (splits * heads_kv)
        end, start = ends[b], starts[b]
        chunk = ((end - start + splits - 1) // splits + BLOCK - 1) // BLOCK * BLOCK
        lo = start + split * chunk
        hi = min(end, lo + chunk)
        qb = np.empty((rows, d), kc.dtype)
        for m in range(rows):
            g, r = m // sq, m % sq
            for c in range(d):
                qb[m, c] = q[b, r, hk * group + g, c] * qk_scale
        acc = np.zeros((rows, d), kc.dtype)
        mx = np.full(rows, neg_inf, kc.dtype)
        den = np.zeros(rows, kc.dtype)
        s = np.empty((rows, BLOCK), kc.dtype)
        seen = np.zeros((rows, BLOCK), np.bool_)
        for j0 in range(lo, hi, BLOCK):
            n = min(BLOCK, hi - j0)
            for c in range(n):
                j = j0 + c
                krow = kc[pages[b, j // page], j % page, hk]
                for m in range(rows):
                    dot = zero
                    for e in range(d):
                        dot += qb[m, e] * krow[e]
                    s[m, c] = dot
            for m in range(rows):
                g, r = m // sq, m % sq
                pos = r + end - sq
                slope2 = slopes[b % slopes.shape[0], hk * group + g]
                m_new = mx[m]
                for c in range(n):
                    j = j0 + c
                    ok = pos - win_left <= j <= pos + win_right
                    seen[m, c] = ok
                    if ok:
                        v = s[m, c]
                        if cap > 0:
                            v = cap * _tanh(v)
                        if alibi == 1:
                            v += slope2 * (j - start)
                        elif alibi == 2:
                            v -= slope2 * abs(pos - j)
                        s[m, c] = v
                        m_new = max(m_new, v)
                if m_new == neg_inf:
                    continue  # nothing visible in this block for this row
                alpha = _exp2(mx[m] - m_new)
                total = zero
                for c in range(n):
                    p = _exp2(s[m, c] - m_new) if seen[m, c] else zero
                    s[m, c] = p
                    total += p
                den[m] = den[m] * alpha + total
                mx[m] = m_new
                for e in range(d):
                    acc[m, e] *= alpha
            for c in range(n):  # P @ V, each value row read once for every query row
                j = j0 + c
                vrow = vc[pages[b, j // page], j % page, hk]
                for m in range(rows):
                    if seen[m, c]:
                        p = s[m, c]
                        for e in range(d):
                            acc[m, e] += p * vrow[e]
        for m in range(rows):
            g, r = m // sq, m % sq
            h = hk * group + g
            if den[m] > 0:
                inv = 1 / den[m]
                for e in range(d):
                    o_part[split, b, h, r, e] = acc[m, e] * inv
                lse_part[split, b, h, r] = mx[m] + np.log2(den[m])
            else:
                for e in range(d):
                    o_part[split, b, h, r, e] = 0
                lse_part[split, b, h, r] = neg_inf


@torch.no_grad()
def decode(q, k_cache, v_cache, pages, page, ends, starts, params: AttnParams, alibi_slopes,
           num_splits):
    """(out like q, lse (B, H, Sq) float32, float64 for float64) of the decode attention;
    pages (B, blocks) int64 and page: where row j of sequence b lives (k_cache[pages[b, j //
    page], j % page]); params bounded; num_splits 0 = choose_splits."""
    _set_threads()
    dtype = k_cache.dtype
    ftype = np.float64 if dtype == torch.float64 else np.float32
    batch, sq, heads, d = q.shape
    heads_kv = k_cache.shape[2]
    longest = int((ends - starts).max()) if batch else 0
    splits = choose_splits(num_splits, batch, heads_kv, longest, numba.get_num_threads())
    if alibi_slopes is None:
        slopes, alibi = np.zeros((1, 1), ftype), 0
    else:
        slopes = (alibi_slopes.detach().double().reshape(-1, heads) * LOG2E).numpy().astype(ftype)
        alibi = 1 if params.alibi_causal else 2
    o_part = torch.empty((splits, batch, heads, sq, d), dtype=dtype)
    lse_part = torch.empty((splits, batch, heads, sq), dtype=dtype)
    _decode(q.detach().to(dtype).numpy(), k_cache.detach().numpy(), v_cache.detach().numpy(),
            pages.numpy(), page, ends.numpy(), starts.numpy(), heads // heads_kv,
            *params.kernel_window, ftype(params.qk_scale), ftype(params.cap_log2), slopes,
            alibi, splits, o_part.numpy(), lse_part.numpy())
    out, lse = merge(o_part, lse_part)
    return out.to(q.dtype), lse.to(lse_dtype(q.dtype))
