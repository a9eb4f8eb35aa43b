"""Flash attention forward and backward in Triton (FlashAttention-2 algorithm).

One kernel per pass, in the style of Triton's fused-attention tutorial:
- forward: one program per (query block, batch*head); online softmax in base 2 over key
  blocks, skipping blocks that no row of the query block can see (causal / window) and
  masking only the blocks on the edges of the visible band;
- backward: a preprocess kernel (delta = rowsum(dO * O) - dLSE), a dK/dV kernel (one program
  per key block and kv head, looping over the query heads of its GQA group, so no atomics
  are needed for dK/dV), and either a dQ kernel (deterministic) or float32 atomic adds of dQ
  from the dK/dV kernel (faster: the score tile is computed twice instead of three times).

Dense (batch, seqlen, heads, d) and varlen (total, heads, d) + cu_seqlens share every
kernel: a varlen tensor is viewed as batch 1 and each program reads its sequence bounds
from cu_seqlens (IS_VARLEN). Inputs are assumed valid: the api module checks them.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .._checks import interpreting
from . import _dropout
from ._params import LN2, LOG2E, AttnParams

# kernels may only read constexpr globals
_LOG2E = tl.constexpr(LOG2E)
_LN2 = tl.constexpr(LN2)

INTERPRET = interpreting()


# ----------------------------------------------------------------------------- helpers


@triton.jit
def _seq_offset(b, start, stride_b, stride_s, IS_VARLEN: tl.constexpr):
    """Element offset of the first row of sequence b (int64: large tensors overflow int32)."""
    if IS_VARLEN:
        return start.to(tl.int64) * stride_s
    else:
        return b.to(tl.int64) * stride_b


@triton.jit
def _bounds(CU, b, seqlen, IS_VARLEN: tl.constexpr):
    """(first row, length) of sequence b: from cu_seqlens when varlen, else (0, seqlen)."""
    if IS_VARLEN:
        start = tl.load(CU + b)
        return start, tl.load(CU + b + 1) - start
    else:
        return 0, seqlen


@triton.jit
def _kv_rows(TABLE, cols, seqlen_k, page_size, stride_kb, stride_ks, stride_vb, stride_vs,
             PAGED: tl.constexpr):
    """Element offsets of the key rows cols in K and V: rows of the sequence, or (PAGED)
    row cols % page_size of block TABLE[cols // page_size] (int64: caches can be large)."""
    if PAGED:
        page = tl.load(TABLE + cols // page_size, mask=cols < seqlen_k, other=0).to(tl.int64)
        within = cols % page_size
        return page * stride_kb + within * stride_ks, page * stride_vb + within * stride_vs
    else:
        return cols * stride_ks, cols * stride_vs


@triton.jit
def _load_tile(ptrs, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               CHECK_ROWS: tl.constexpr):
    """Load a (rows, head_dim) tile, zero-filled past n_rows and past head_dim. Masks are
    left out where they cannot matter, so the hot loops issue plain vector loads."""
    if CHECK_ROWS:
        return tl.load(ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM),
                       other=0.0)
    elif HEAD_DIM == BLOCK_D:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)


@triton.jit
def _span(a0, a1, off, lo_w, hi_w, n_other, BLOCK: tl.constexpr):
    """Which blocks of the other axis the rows a0 <= a < a1 need.

    Row a sees other-index x when a + off - lo_w <= x <= a + off + hi_w and 0 <= x < n_other.
    Returns BLOCK-aligned (start, full_start, full_end, end): blocks in [full_start, full_end)
    are seen whole by every row (no mask needed); blocks in [start, full_start) and
    [full_end, end) need the mask; nothing outside [start, end) is visible, so it is skipped.
    """
    lo = tl.maximum(a0 + off - lo_w, 0)
    hi = tl.minimum(a1 + off + hi_w, n_other)
    start = lo // BLOCK * BLOCK
    end = tl.maximum(hi, start)
    all_lo = tl.maximum(a1 - 1 + off - lo_w, 0)
    all_hi = tl.maximum(tl.minimum(a0 + off + hi_w + 1, n_other), 0)
    full_start = tl.minimum(tl.maximum((all_lo + BLOCK - 1) // BLOCK * BLOCK, start), end)
    full_end = tl.minimum(tl.maximum(all_hi // BLOCK * BLOCK, full_start), end)
    return start, full_start, full_end, end


@triton.jit
def _visible(rows, cols, n_rows, n_cols, off, win_left, win_right):
    """Bool tile: query rows[:, None] sees key cols[None, :] (bounds, causal and window)."""
    pos = rows[:, None] + off
    return ((rows[:, None] < n_rows) & (cols[None, :] < n_cols)
            & (cols[None, :] >= pos - win_left) & (cols[None, :] <= pos + win_right))


@triton.jit
def _tanh(x):
    # tanh through exp2 (the interpreter has no libdevice); saturates cleanly to +-1.
    # tensor * constexpr, not constexpr * tensor: triton 3.8's interpreter refuses the latter
    return 1.0 - 2.0 / (tl.math.exp2(x * (2.0 * _LOG2E)) + 1.0)


@triton.jit
def _scores(qk, qk_scale, cap_log2, SOFTCAP: tl.constexpr):
    """Raw q.k to log2-domain scores; also returns tanh for the softcap derivative."""
    if SOFTCAP:
        t = _tanh(qk * qk_scale)
        return t * cap_log2, t
    else:
        return qk * qk_scale, qk


@triton.jit
def _alibi(s, rr, cc, off, slope2, ALIBI: tl.constexpr):
    """Adds ALiBi in log2 units (slope2 = slope * log2 e) to the score tile s for query rows
    rr and key cols cc (broadcasting index tensors): ALIBI 1 is flash-attn's causal form
    (+ slope * col), 2 the distance form (- slope * |row + off - col|), 0 none."""
    if ALIBI == 1:
        return s + slope2 * cc.to(tl.float32)
    elif ALIBI == 2:
        return s - slope2 * tl.abs(rr + off - cc).to(tl.float32)
    else:
        return s


@triton.jit
def _kept(rows, n0, h, seed, philox_off, drop_thr, BLOCK_N: tl.constexpr):
    """Dropout: which entries of the (token rows, keys n0 .. n0 + BLOCK_N) tile are kept:
    the counter-based Philox stream of _dropout.py, so every pass and every backend drops
    the same ones. One philox call per four keys (n0 is a multiple of 4): its four words
    are interleaved back into the tile's columns."""
    quads = n0 // 4 + tl.arange(0, BLOCK_N // 4)
    zero = rows[:, None] * 0 + quads[None, :] * 0
    w0, w1, w2, w3 = tl.philox(seed, quads[None, :] + zero, rows[:, None] + zero, h + zero,
                               philox_off + zero)
    # join(join(w0, w2), join(w1, w3))[m, q, i, j] is word 2i + j: row-major, key 4q + 2i + j
    words = tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)),
                       (rows.shape[0], BLOCK_N))
    return (words >> 1).to(tl.int32) >= drop_thr


@triton.jit
def _row_base(b, q_start, seqlen_q, IS_VARLEN: tl.constexpr):
    """The token row of sequence b's first query (dropout's counter)."""
    if IS_VARLEN:
        return q_start
    else:
        return b * seqlen_q


@triton.jit
def _slope(ALIBI_SLOPES, b, h, stride_ab, ALIBI: tl.constexpr):
    """Head h's ALiBi slope for sequence b, in log2 units (0 without ALiBi)."""
    if ALIBI != 0:
        return tl.load(ALIBI_SLOPES + b * stride_ab + h) * _LOG2E
    else:
        return 0.0


# ----------------------------------------------------------------------------- forward


@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "win_left", "win_right", "seed", "philox_off", "drop_thr"])
def _fwd_kernel(Q, K, V, O, LSE, CU_Q, CU_K, ALIBI_SLOPES, TABLE,
                stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                stride_vb, stride_vs, stride_vh, stride_ob, stride_os, stride_oh,
                stride_lb, stride_lh, stride_tb, page_size,
                seqlen_q, seqlen_k, heads_q, group, win_left, win_right, qk_scale, cap_log2,
                seq_key, stride_ab, seed, philox_off, drop_thr, drop_scale,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, IS_VARLEN: tl.constexpr, SOFTCAP: tl.constexpr,
                ALIBI: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr,
                PAGED: tl.constexpr):
    """PAGED: K, V are paged caches (blocks, page_size, heads_kv, d) read in place through
    the block table TABLE (batch, blocks) (stride_kb, stride_vb: the block strides)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // heads_q
    h = pid_bh % heads_q
    q_start, seqlen_q = _bounds(CU_Q, b, seqlen_q, IS_VARLEN)
    k_start, seqlen_k = _bounds(CU_K, b, seqlen_k, IS_VARLEN)
    m0 = pid_m * BLOCK_M
    if m0 >= seqlen_q:
        return
    Q += _seq_offset(b, q_start, stride_qb, stride_qs, IS_VARLEN) + h * stride_qh
    O += _seq_offset(b, q_start, stride_ob, stride_os, IS_VARLEN) + h * stride_oh
    if PAGED:
        K += (h // group) * stride_kh
        V += (h // group) * stride_vh
        TABLE += b * stride_tb
    else:
        K += _seq_offset(b, k_start, stride_kb, stride_ks, IS_VARLEN) + (h // group) * stride_kh
        V += _seq_offset(b, k_start, stride_vb, stride_vs, IS_VARLEN) + (h // group) * stride_vh
    LSE += _seq_offset(b, q_start, stride_lb, 1, IS_VARLEN) + h * stride_lh
    row0 = _row_base(b, q_start, seqlen_q, IS_VARLEN)
    slope2 = _slope(ALIBI_SLOPES, b, h, stride_ab, ALIBI)

    rows = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_ok = (rows[:, None] < seqlen_q) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + rows[:, None] * stride_qs + offs_d[None, :], mask=q_ok, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    off = seqlen_k - seqlen_q  # bottom-right alignment: row i sits at key position i + off
    spans = _span(m0, tl.minimum(m0 + BLOCK_M, seqlen_q), off, win_left, win_right, seqlen_k,
                  BLOCK_N)
    # rows with no key in their window (one predicate per row, not four scalars, stays live)
    blind = (tl.minimum(seqlen_k, rows + off + win_right + 1)
             <= tl.maximum(rows + off - win_left, 0))
    # The key blocks in three parts, unrolled at compile time (part is a constexpr): 0 the
    # left edge of a sliding window, 1 the blocks every row sees whole, 2 the diagonal /
    # right edge / tail. All but part 1 need the mask.
    for part in tl.static_range(3):
        for n0 in range(spans[part], spans[part + 1], BLOCK_N):
            cols = n0 + offs_n
            k_rows, v_rows = _kv_rows(TABLE, cols, seqlen_k, page_size, stride_kb, stride_ks,
                                      stride_vb, stride_vs, PAGED)
            k = _load_tile(K + k_rows[:, None] + offs_d[None, :], cols, seqlen_k,
                           offs_d, HEAD_DIM, BLOCK_D, part != 1)
            v = _load_tile(V + v_rows[:, None] + offs_d[None, :], cols, seqlen_k,
                           offs_d, HEAD_DIM, BLOCK_D, part != 1)
            s, _t = _scores(tl.dot(q, tl.trans(k), input_precision=DOT_PREC), qk_scale,
                            cap_log2, SOFTCAP)
            s = _alibi(s, rows[:, None], cols[None, :], off, slope2, ALIBI)
            if part != 1:
                s = tl.where(_visible(rows, cols, seqlen_q, seqlen_k, off, win_left, win_right),
                             s, float("-inf"))
            # Online softmax: m_i is the running row max, l_i the sum of exp2(s - m_i) and
            # acc that of p @ v so far; a new max rescales both by alpha = exp2(m_old - m_new).
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A row that has seen no key yet has max -inf: shift by 0 so exp2 gives 0, not NaN.
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_use[:, None])
            alpha = tl.math.exp2(m_i - m_use)
            l_i = l_i * alpha + tl.sum(p, 1)  # the softmax sums every p; dropout follows it
            if DROPOUT:
                p = tl.where(_kept(row0 + rows, n0, h, seed, philox_off, drop_thr, BLOCK_N),
                             p, 0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
            m_i = m_new
    # A row that saw no key: output 0, lse -inf. One whose visible scores were all -inf (an
    # Inf in q or k): 0 / 0 = NaN, as IEEE and SDPA give.
    empty = (l_i == 0.0) & blind
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    if DROPOUT:
        out = out * drop_scale
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * _LN2)
    tl.store(O + rows[:, None] * stride_os + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=q_ok)
    tl.store(LSE + rows, lse, mask=rows < seqlen_q)


# ----------------------------------------------------------------------------- backward


@triton.jit(do_not_specialize=["seqlen_q"])
def _bwd_preprocess_kernel(O, DO, DLSE, DELTA, CU_Q,
                           stride_ob, stride_os, stride_oh, stride_db, stride_ds, stride_dh,
                           stride_lb, stride_lh, seqlen_q, heads_q,
                           HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                           IS_VARLEN: tl.constexpr):
    """delta = rowsum(dO * O) - dLSE, in the layout of the LSE."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // heads_q
    h = pid_bh % heads_q
    q_start, seqlen_q = _bounds(CU_Q, b, seqlen_q, IS_VARLEN)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (rows[:, None] < seqlen_q) & (offs_d[None, :] < HEAD_DIM)
    O += _seq_offset(b, q_start, stride_ob, stride_os, IS_VARLEN) + h * stride_oh
    DO += _seq_offset(b, q_start, stride_db, stride_ds, IS_VARLEN) + h * stride_dh
    lse_off = _seq_offset(b, q_start, stride_lb, 1, IS_VARLEN) + h * stride_lh
    o = tl.load(O + rows[:, None] * stride_os + offs_d[None, :], mask=ok, other=0.0)
    do = tl.load(DO + rows[:, None] * stride_ds + offs_d[None, :], mask=ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    delta -= tl.load(DLSE + lse_off + rows, mask=rows < seqlen_q, other=0.0)
    tl.store(DELTA + lse_off + rows, delta, mask=rows < seqlen_q)


@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "win_left", "win_right", "seed", "philox_off", "drop_thr"])
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, DQ, CU_Q, CU_K, ALIBI_SLOPES,
                     stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                     stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
                     stride_dkb, stride_dks, stride_dkh, stride_dvb, stride_dvs, stride_dvh,
                     stride_dqb, stride_dqs, stride_dqh, stride_lb, stride_lh,
                     seqlen_q, seqlen_k, heads_kv, group, win_left, win_right,
                     qk_scale, cap_log2, sm_scale, seq_key, stride_ab, seed, philox_off,
                     drop_thr, drop_scale,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, IS_VARLEN: tl.constexpr, SOFTCAP: tl.constexpr,
                     ALIBI: tl.constexpr, DROPOUT: tl.constexpr, ATOMIC_DQ: tl.constexpr,
                     DOT_PREC: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // heads_kv
    hk = pid_bh % heads_kv
    q_start, seqlen_q = _bounds(CU_Q, b, seqlen_q, IS_VARLEN)
    k_start, seqlen_k = _bounds(CU_K, b, seqlen_k, IS_VARLEN)
    n0 = pid_n * BLOCK_N
    if n0 >= seqlen_k:
        return
    K += _seq_offset(b, k_start, stride_kb, stride_ks, IS_VARLEN) + hk * stride_kh
    V += _seq_offset(b, k_start, stride_vb, stride_vs, IS_VARLEN) + hk * stride_vh
    DK += _seq_offset(b, k_start, stride_dkb, stride_dks, IS_VARLEN) + hk * stride_dkh
    DV += _seq_offset(b, k_start, stride_dvb, stride_dvs, IS_VARLEN) + hk * stride_dvh
    Q += _seq_offset(b, q_start, stride_qb, stride_qs, IS_VARLEN)
    DO += _seq_offset(b, q_start, stride_dob, stride_dos, IS_VARLEN)
    DQ += _seq_offset(b, q_start, stride_dqb, stride_dqs, IS_VARLEN)
    lse_off = _seq_offset(b, q_start, stride_lb, 1, IS_VARLEN)
    row0 = _row_base(b, q_start, seqlen_q, IS_VARLEN)

    cols = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    kv_ok = (cols[:, None] < seqlen_k) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(K + cols[:, None] * stride_ks + offs_d[None, :], mask=kv_ok, other=0.0)
    v = tl.load(V + cols[:, None] * stride_vs + offs_d[None, :], mask=kv_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    off = seqlen_k - seqlen_q
    # key j is seen by query rows i with j - off - right <= i <= j - off + left
    start, full_start, full_end, end = _span(n0, tl.minimum(n0 + BLOCK_N, seqlen_k), -off,
                                             win_right, win_left, seqlen_q, BLOCK_M)
    # A key block that runs past seqlen_k has padding columns; only the masked parts zero
    # their probabilities, so send every query block through them.
    partial = n0 + BLOCK_N > seqlen_k
    spans = (start, tl.where(partial, end, full_start), tl.where(partial, end, full_end), end)
    for g in range(group):  # the query heads sharing this kv head: GQA sums in-kernel
        h = hk * group + g
        Qh = Q + h * stride_qh
        DOh = DO + h * stride_doh
        DQh = DQ + h * stride_dqh
        LSEh = LSE + lse_off + h * stride_lh
        DELTAh = DELTA + lse_off + h * stride_lh
        slope2 = _slope(ALIBI_SLOPES, b, h, stride_ab, ALIBI)
        # the query blocks in three parts as in the forward: only part 1 needs no mask
        for part in tl.static_range(3):
            for m0 in range(spans[part], spans[part + 1], BLOCK_M):
                rows = m0 + offs_m
                q = _load_tile(Qh + rows[:, None] * stride_qs + offs_d[None, :], rows, seqlen_q,
                               offs_d, HEAD_DIM, BLOCK_D, part != 1)
                do = _load_tile(DOh + rows[:, None] * stride_dos + offs_d[None, :], rows,
                                seqlen_q, offs_d, HEAD_DIM, BLOCK_D, part != 1)
                lse = tl.load(LSEh + rows, mask=rows < seqlen_q, other=0.0) * _LOG2E
                delta = tl.load(DELTAh + rows, mask=rows < seqlen_q, other=0.0)
                # transposed tiles (keys x queries): dK and dV accumulate over queries
                sT, tT = _scores(tl.dot(k, tl.trans(q), input_precision=DOT_PREC), qk_scale,
                                 cap_log2, SOFTCAP)
                sT = _alibi(sT, rows[None, :], cols[:, None], off, slope2, ALIBI)
                pT = tl.math.exp2(sT - lse[None, :])
                if part != 1:
                    pT = tl.where(tl.trans(_visible(rows, cols, seqlen_q, seqlen_k, off,
                                                    win_left, win_right)), pT, 0.0)
                if DROPOUT:  # dV sums the kept P (scaled at the end); dP reaches kept ones
                    dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
                    keepT = tl.trans(_kept(row0 + rows, n0, h, seed, philox_off, drop_thr,
                                           BLOCK_N))
                    dv += tl.dot(tl.where(keepT, pT, 0.0).to(do.dtype), do,
                                 input_precision=DOT_PREC)
                    dpT = tl.where(keepT, dpT * drop_scale, 0.0)
                else:  # this order (dV's product first) keeps the 16-bit tiles unspilled
                    dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PREC)
                    dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
                dsT = pT * (dpT - delta[None, :])
                if SOFTCAP:
                    dsT = dsT * (1.0 - tT * tT)
                dsT = dsT.to(q.dtype)
                dk += tl.dot(dsT, q, input_precision=DOT_PREC)
                if ATOMIC_DQ:
                    dq = tl.dot(tl.trans(dsT), k, input_precision=DOT_PREC) * sm_scale
                    tl.atomic_add(DQh + rows[:, None] * stride_dqs + offs_d[None, :], dq,
                                  mask=(rows[:, None] < seqlen_q) & (offs_d[None, :] < HEAD_DIM),
                                  sem="relaxed")
    tl.store(DK + cols[:, None] * stride_dks + offs_d[None, :], (dk * sm_scale).to(
        DK.dtype.element_ty), mask=kv_ok)
    if DROPOUT:
        dv = dv * drop_scale
    tl.store(DV + cols[:, None] * stride_dvs + offs_d[None, :], dv.to(DV.dtype.element_ty),
             mask=kv_ok)


@triton.jit(do_not_specialize=["seqlen_q", "seqlen_k", "win_left", "win_right", "seed", "philox_off", "drop_thr"])
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, CU_Q, CU_K, ALIBI_SLOPES,
                   stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                   stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
                   stride_dqb, stride_dqs, stride_dqh, stride_lb, stride_lh,
                   seqlen_q, seqlen_k, heads_q, group, win_left, win_right,
                   qk_scale, cap_log2, sm_scale, seq_key, stride_ab, seed, philox_off,
                   drop_thr, drop_scale,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, IS_VARLEN: tl.constexpr, SOFTCAP: tl.constexpr,
                   ALIBI: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // heads_q
    h = pid_bh % heads_q
    q_start, seqlen_q = _bounds(CU_Q, b, seqlen_q, IS_VARLEN)
    k_start, seqlen_k = _bounds(CU_K, b, seqlen_k, IS_VARLEN)
    m0 = pid_m * BLOCK_M
    if m0 >= seqlen_q:
        return
    Q += _seq_offset(b, q_start, stride_qb, stride_qs, IS_VARLEN) + h * stride_qh
    DO += _seq_offset(b, q_start, stride_dob, stride_dos, IS_VARLEN) + h * stride_doh
    DQ += _seq_offset(b, q_start, stride_dqb, stride_dqs, IS_VARLEN) + h * stride_dqh
    K += _seq_offset(b, k_start, stride_kb, stride_ks, IS_VARLEN) + (h // group) * stride_kh
    V += _seq_offset(b, k_start, stride_vb, stride_vs, IS_VARLEN) + (h // group) * stride_vh
    lse_off = _seq_offset(b, q_start, stride_lb, 1, IS_VARLEN) + h * stride_lh
    row0 = _row_base(b, q_start, seqlen_q, IS_VARLEN)
    slope2 = _slope(ALIBI_SLOPES, b, h, stride_ab, ALIBI)

    rows = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_ok = (rows[:, None] < seqlen_q) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + rows[:, None] * stride_qs + offs_d[None, :], mask=q_ok, other=0.0)
    do = tl.load(DO + rows[:, None] * stride_dos + offs_d[None, :], mask=q_ok, other=0.0)
    lse = tl.load(LSE + lse_off + rows, mask=rows < seqlen_q, other=0.0) * _LOG2E
    delta = tl.load(DELTA + lse_off + rows, mask=rows < seqlen_q, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    off = seqlen_k - seqlen_q
    spans = _span(m0, tl.minimum(m0 + BLOCK_M, seqlen_q), off, win_left, win_right, seqlen_k,
                  BLOCK_N)
    # the key blocks in three parts as in the forward: only part 1 needs no mask
    for part in tl.static_range(3):
        for n0 in range(spans[part], spans[part + 1], BLOCK_N):
            cols = n0 + offs_n
            k = _load_tile(K + cols[:, None] * stride_ks + offs_d[None, :], cols, seqlen_k,
                           offs_d, HEAD_DIM, BLOCK_D, part != 1)
            v = _load_tile(V + cols[:, None] * stride_vs + offs_d[None, :], cols, seqlen_k,
                           offs_d, HEAD_DIM, BLOCK_D, part != 1)
            s, t = _scores(tl.dot(q, tl.trans(k), input_precision=DOT_PREC), qk_scale, cap_log2,
                           SOFTCAP)
            s = _alibi(s, rows[:, None], cols[None, :], off, slope2, ALIBI)
            p = tl.math.exp2(s - lse[:, None])
            if part != 1:
                p = tl.where(_visible(rows, cols, seqlen_q, seqlen_k, off, win_left, win_right),
                             p, 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
            if DROPOUT:
                dp = tl.where(_kept(row0 + rows, n0, h, seed, philox_off, drop_thr, BLOCK_N),
                              dp * drop_scale, 0.0)
            ds = p * (dp - delta[:, None])
            if SOFTCAP:
                ds = ds * (1.0 - t * t)
            dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
    tl.store(DQ + rows[:, None] * stride_dqs + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=q_ok)


# ----------------------------------------------------------------------------- launchers


# Tiles (BLOCK_M, BLOCK_N, num_warps, num_stages) for Hopper (sm_90: H100, H200), per
# kernel, head-dim bucket (BLOCK_D; head dims up to 64 share the 64 bucket) and products:
# "tc" (float16/bfloat16 on the tensor cores, wgmma) or "ieee" (float32, exact products on
# the FMA units); "-gqa" lists serve GQA/MQA launches (several query heads per kv head:
# the dK/dV kernel's loop over them costs registers); "-extras" lists serve launches with
# ALiBi or dropout (the Philox counters of a tile cost registers: these lists drop the
# tiles that spill with both on; where a kernel has no such list, none of its tiles
# spills). Every tile listed compiles for sm_90 without register spills and within shared
# memory at every dtype of its kind and every feature (varlen, softcap, causal, GQA,
# ALiBi + dropout): `kernelsuite hopper-static` measures it
# (bench/report/hopper-static.md, with the candidates they were chosen from) and
# tests/test_triton_static.py checks it. The first tile of a list is the one used without
# autotuning.
HOPPER_TILES = {
    "fwd": {
        (64, "tc"): [(128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 4, 3), (64, 128, 8, 2),
                     (64, 64, 4, 3)],
        (128, "tc"): [(128, 128, 8, 2), (128, 64, 8, 3), (64, 128, 8, 2), (64, 64, 8, 3),
                      (128, 32, 8, 3)],
        (256, "tc"): [(128, 32, 8, 2), (64, 32, 8, 3), (64, 32, 8, 2), (64, 32, 4, 2)],
        (64, "ieee"): [(32, 64, 8, 2), (32, 32, 8, 2)],
        (128, "ieee"): [(32, 64, 8, 2), (16, 32, 8, 1)],
        (256, "ieee"): [(16, 32, 8, 2)],
        (64, "tc-extras"): [(128, 128, 8, 2), (128, 64, 8, 3), (64, 64, 4, 3)],
        (128, "tc-extras"): [(128, 64, 8, 3), (64, 64, 8, 3), (128, 32, 8, 3)],
        (256, "tc-extras"): [(128, 32, 8, 2), (64, 32, 8, 2)],
    },
    "dkdv": {
        (64, "tc"): [(64, 64, 8, 2), (32, 128, 8, 2), (32, 64, 8, 2), (32, 64, 4, 2),
                     (16, 64, 4, 2)],
        (128, "tc"): [(32, 128, 8, 2), (32, 64, 8, 2), (16, 128, 8, 2), (16, 64, 8, 2),
                      (32, 32, 4, 2)],
        (256, "tc"): [(64, 32, 8, 2), (32, 32, 8, 2), (16, 32, 8, 2)],
        (64, "ieee"): [(32, 32, 8, 2), (16, 32, 8, 2)],
        (128, "ieee"): [(16, 32, 8, 2), (16, 16, 4, 2)],
        (256, "ieee"): [(16, 16, 8, 2)],
        (64, "tc-gqa"): [(64, 32, 8, 2), (32, 64, 8, 2), (16, 128, 8, 2), (16, 64, 8, 2),
                         (32, 32, 8, 2)],
        (128, "tc-gqa"): [(16, 64, 8, 2), (32, 32, 8, 2), (16, 32, 8, 2)],
        (256, "tc-gqa"): [(16, 32, 8, 2)],
        (64, "ieee-gqa"): [(32, 32, 8, 2), (16, 32, 4, 2)],
        (128, "ieee-gqa"): [(16, 64, 8, 2)],
        (256, "ieee-gqa"): [(16, 16, 8, 1)],
        (128, "tc-extras"): [(16, 128, 8, 2), (16, 64, 8, 2), (32, 32, 4, 2)],
        (64, "ieee-extras"): [(16, 32, 8, 2)],
        (128, "ieee-extras"): [(16, 16, 4, 2)],
        (256, "tc-extras"): [(32, 32, 8, 2), (16, 32, 8, 2)],
        (256, "ieee-extras"): [(16, 16, 4, 2)],
    },
    "dq": {
        (64, "tc"): [(128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 8, 3), (64, 32, 4, 3),
                     (32, 32, 4, 2)],
        (128, "tc"): [(128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 8, 2), (64, 32, 8, 2),
                      (32, 32, 8, 2)],
        (256, "tc"): [(64, 32, 8, 2), (32, 64, 8, 2), (32, 32, 4, 2)],
        (64, "ieee"): [(64, 32, 8, 2), (32, 64, 8, 2)],
        (128, "ieee"): [(32, 64, 8, 2), (16, 32, 8, 2)],
        (256, "ieee"): [(16, 32, 8, 1)],
        (256, "tc-extras"): [(32, 64, 8, 2), (32, 32, 4, 2)],
    },
}
# Under the interpreter one tile each: it is slow, and blocks smaller than the test
# sequences exercise every masking path (M != N catches block-alignment mistakes).
# tests/test_triton_configs.py runs every Hopper tile through the interpreter as well.
INTERPRET_TILES = {"fwd": (32, 16, 4, 1), "dkdv": (16, 32, 4, 1), "dq": (32, 16, 4, 1)}


def tiles(kernel: str, block_d: int, dot_prec: str, gqa: bool = False,
          extras: bool = False) -> list[tuple]:
    """The tiles the autotuner may pick for one kernel at this BLOCK_D and precision (and
    for GQA launches, or those with ALiBi or dropout (extras), where the kernel has a list
    of its own; with both, the tiles the two lists share, else the extras list)."""
    if INTERPRET:
        return [INTERPRET_TILES[kernel]]
    table, kind = HOPPER_TILES[kernel], "ieee" if dot_prec == "ieee" else "tc"
    bucket = max(64, block_d)
    plain = table[bucket, kind]
    gqa_list = table.get((bucket, kind + "-gqa"), plain) if gqa else plain
    if not extras or (bucket, kind + "-extras") not in table:
        return gqa_list
    extra_list = table[bucket, kind + "-extras"]
    return [t for t in extra_list if t in gqa_list] or extra_list


def tile_of(config) -> tuple:
    return (config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.num_warps,
            config.num_stages)


def _configs(kernel):
    every = [INTERPRET_TILES[kernel]] if INTERPRET else list(dict.fromkeys(
        t for ts in HOPPER_TILES[kernel].values() for t in ts))
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st)
            for m, n, w, st in every]


def autotuning() -> bool:
    """KERNELSUITE_TRITON_AUTOTUNE=0: take the first tile that applies instead of timing
    every one (fewer compiles: for test runs and quick checks on a GPU)."""
    return os.environ.get("KERNELSUITE_TRITON_AUTOTUNE", "1") != "0"


def _prune(kernel):
    def prune(configs, named_args, **kwargs):
        gqa = (named_args or {}).get("group", 1) > 1
        wanted = tiles(kernel, kwargs["BLOCK_D"], kwargs["DOT_PREC"], gqa,
                       bool(kwargs.get("ALIBI") or kwargs.get("DROPOUT")))
        keep = sorted((c for c in configs if tile_of(c) in wanted),
                      key=lambda c: wanted.index(tile_of(c)))
        if not keep:  # a config list set by hand (tests): take it as it is
            keep = list(configs)
        return keep if autotuning() else keep[:1]
    return {"early_config_prune": prune}


# seq_key is an unused kernel argument carrying the power-of-two bucket of the longest
# sequence, so the autotuner re-tunes per length bucket, not per exact (varlen) length;
# group (query heads per kv head) picks the GQA tiles.
_KEY = ["seq_key", "HEAD_DIM", "win_right", "IS_VARLEN", "SOFTCAP", "ALIBI", "DROPOUT",
        "group"]
_FWD_KEY = _KEY + ["PAGED"]


_fwd = triton.autotune(_configs("fwd"), key=_FWD_KEY,
                       prune_configs_by=_prune("fwd"))(_fwd_kernel)
_bwd_dkdv = triton.autotune(_configs("dkdv"), key=_KEY, prune_configs_by=_prune("dkdv"),
                            reset_to_zero=["DQ"])(_bwd_dkdv_kernel)
_bwd_dq = triton.autotune(_configs("dq"), key=_KEY,
                          prune_configs_by=_prune("dq"))(_bwd_dq_kernel)


def _unit_last(x):
    """The kernels index the last dim with stride 1; any other layout is used as is."""
    return x if x.stride(-1) == 1 else x.contiguous()


class _Launch:
    """Launch arguments shared by every kernel of one attention call."""

    def __init__(self, q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k, params: AttnParams,
                 alibi_slopes, philox):
        self.varlen = cu_seqlens_q is not None
        if self.varlen:
            self.batch = cu_seqlens_q.numel() - 1
        else:
            self.batch, max_seqlen_q, max_seqlen_k = q.shape[0], q.shape[1], k.shape[1]
        self.max_seqlen_q, self.max_seqlen_k = max_seqlen_q, max_seqlen_k
        self.heads_q, self.heads_kv = q.shape[-2], k.shape[-2]
        self.group = self.heads_q // self.heads_kv
        self.window = params.kernel_window  # (win_left, win_right)
        seq_key = max(128, triton.next_power_of_2(max(max_seqlen_q, max_seqlen_k, 1)))
        # (qk_scale, cap_log2, sm_scale, seq_key): the float tail of the backward kernels
        self.scales = (params.qk_scale, params.cap_log2, params.softmax_scale, seq_key)
        # ALiBi slopes (float32, (heads,) or (batch, heads)) and dropout: pointer, slope
        # batch stride, Philox seed and offset, keep threshold, 1 / (1 - dropout_p)
        self.alibi = alibi_slopes
        stride_ab = 0 if alibi_slopes is None or alibi_slopes.dim() == 1 else alibi_slopes.stride(0)
        self.extras = (stride_ab, *philox, _dropout.threshold(params.dropout_p),
                       1.0 / (1.0 - params.dropout_p))
        self.constexprs = dict(
            HEAD_DIM=q.shape[-1], BLOCK_D=max(16, triton.next_power_of_2(q.shape[-1])),
            IS_VARLEN=self.varlen, SOFTCAP=params.softcap > 0,
            ALIBI=0 if alibi_slopes is None else 1 if params.alibi_causal else 2,
            DROPOUT=params.dropout_p > 0,
            # float32 inputs get true float32 products: tf32 would cost ~3e-4 relative error
            DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32")

    def strides(self, x):
        """(batch, seq, head) strides; a varlen (total, heads, d) tensor is batch 1."""
        if self.varlen:
            return (0, x.stride(0), x.stride(1))
        return (x.stride(0), x.stride(1), x.stride(2))

    def lse_strides(self, lse):
        """LSE is (batch, heads, seqlen) dense, (heads, total) varlen; rows are contiguous."""
        return (0, lse.stride(0)) if self.varlen else (lse.stride(0), lse.stride(1))


def forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
            window_left, window_right, softcap, *, dropout_p=0.0, philox=(0, 0),
            alibi_slopes=None, block_table=None, out=None, lse=None):
    """Returns (out, lse). lse is float32, (batch, heads, seqlen_q) or (heads, total_q).
    dropout_p with philox = (seed, offset): see _dropout.py; alibi_slopes: float32 (heads,)
    or (batch, heads), contiguous. block_table (varlen only; int32 (batch, max_blocks)): k
    and v are paged caches (num_blocks, page_size, heads_kv, d), read in place (checked by
    the caller); sequence b's keys are its first cu_seqlens_k[b+1] - cu_seqlens_k[b] rows.

    out and lse may be given (contiguous, of those shapes); tests poison them to check that
    every element is written.
    """
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    L = _Launch(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k,
                AttnParams(softmax_scale, window_left, window_right, softcap,
                           dropout_p=dropout_p), alibi_slopes, philox)
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if lse is None:
        lse_shape = (L.heads_q, q.shape[0]) if L.varlen else (L.batch, L.heads_q, q.shape[1])
        lse = torch.empty(lse_shape, dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    grid = lambda meta: (triton.cdiv(L.max_seqlen_q, meta["BLOCK_M"]), L.batch * L.heads_q)  # noqa: E731
    qk_scale, cap_log2, _, seq_key = L.scales
    paged = block_table is not None
    if paged:  # (block, row, head) strides; the table's row stride and the page size
        kv_strides = (*k.stride()[:3], *v.stride()[:3])
        block_table = block_table.contiguous()
        table = (block_table, block_table.stride(0), k.shape[1])
    else:
        kv_strides = (*L.strides(k), *L.strides(v))
        table = (None, 0, 1)
    _fwd[grid](q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, L.alibi, table[0],
               *L.strides(q), *kv_strides, *L.strides(out), *L.lse_strides(lse), *table[1:],
               L.max_seqlen_q, L.max_seqlen_k, L.heads_q, L.group, *L.window, qk_scale,
               cap_log2, seq_key, *L.extras, PAGED=paged, **L.constexprs)
    return out, lse


def backward(dout, dlse, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
             max_seqlen_k, softmax_scale, window_left, window_right, softcap, deterministic,
             *, dropout_p=0.0, philox=(0, 0), alibi_slopes=None, dq=None, dk=None, dv=None):
    """Returns (dq, dk, dv). dlse (the gradient of the returned LSE) may be None.

    deterministic=False accumulates dq with float32 atomics from the dK/dV kernel;
    deterministic=True computes dq in its own kernel, bitwise reproducible. dq, dk, dv may
    be given (contiguous, shaped like q, k, v).
    """
    q, k, v, out, dout = (_unit_last(t) for t in (q, k, v, out, dout))
    L = _Launch(q, k, cu_seqlens_q, max_seqlen_q, max_seqlen_k,
                AttnParams(softmax_scale, window_left, window_right, softcap, deterministic,
                           dropout_p), alibi_slopes, philox)
    dq_out = torch.empty(q.shape, dtype=q.dtype, device=q.device) if dq is None else dq
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device) if dk is None else dk
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device) if dv is None else dv
    # the atomic path accumulates dq in float32, then rounds once
    dq = dq_out if deterministic else torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    if q.numel() == 0 or k.numel() == 0:
        return dq_out.zero_(), dk.zero_(), dv.zero_()
    dlse = torch.zeros_like(lse) if dlse is None else dlse.contiguous()
    delta = torch.empty_like(lse)
    block_m = 32 if INTERPRET else 64
    _bwd_preprocess_kernel[(triton.cdiv(L.max_seqlen_q, block_m), L.batch * L.heads_q)](
        out, dout, dlse, delta, cu_seqlens_q, *L.strides(out), *L.strides(dout),
        *L.lse_strides(lse), L.max_seqlen_q, L.heads_q, HEAD_DIM=L.constexprs["HEAD_DIM"],
        BLOCK_D=L.constexprs["BLOCK_D"], BLOCK_M=block_m, IS_VARLEN=L.varlen)

    grid = lambda meta: (triton.cdiv(L.max_seqlen_k, meta["BLOCK_N"]), L.batch * L.heads_kv)  # noqa: E731
    _bwd_dkdv[grid](q, k, v, dout, lse, delta, dk, dv, dq, cu_seqlens_q, cu_seqlens_k,
                    L.alibi, *L.strides(q), *L.strides(k), *L.strides(v), *L.strides(dout),
                    *L.strides(dk), *L.strides(dv), *L.strides(dq), *L.lse_strides(lse),
                    L.max_seqlen_q, L.max_seqlen_k, L.heads_kv, L.group, *L.window,
                    *L.scales, *L.extras, ATOMIC_DQ=not deterministic, **L.constexprs)
    if not deterministic:
        return dq_out.copy_(dq), dk, dv
    grid = lambda meta: (triton.cdiv(L.max_seqlen_q, meta["BLOCK_M"]), L.batch * L.heads_q)  # noqa: E731
    _bwd_dq[grid](q, k, v, dout, lse, delta, dq, cu_seqlens_q, cu_seqlens_k, L.alibi,
                  *L.strides(q),
                  *L.strides(k), *L.strides(v), *L.strides(dout), *L.strides(dq),
                  *L.lse_strides(lse), L.max_seqlen_q, L.max_seqlen_k, L.heads_q, L.group,
                  *L.window, *L.scales, *L.extras, **L.constexprs)
    return dq, dk, dv
