"""Split-KV decode attention in Numba: a few query rows against a KV cache, read in place.

One task per (sequence, kv head, split): the split is a contiguous slice of the sequence's
visible cache rows [cache_leftpad, cache_seqlens + seqlen_new); the task reads each of its
key and value rows once, for all the query rows of its kv head's GQA group (group x
seqlen_q rows), and keeps an online softmax over them (scores in log2 units, as
numba_flash). A second step merges the splits' partial outputs by their log-sum-exp
(FlashDecoding). Tasks run in parallel over (sequence, kv head, split), so a single long
sequence still uses every thread. The cache is addressed through a page table: a paged
cache directly, a contiguous one as one page per sequence (its row, or cache_batch_idx's).

How a task reads the cache (measured on this project's 2-core AVX2 box, batch 8, 4k
context, GQA 32/8, head_dim 128, float32): S = Q K^T goes through ``_dots2``, a 4 query rows
x 2 keys tile of dot products that reads key rows straight from the cache in vectors (the
outer-product microkernel of numba_flash would need K transposed, or broadcasts from 6
rows 4 KB apart: slower); P V goes through numba_flash's ``_gemm`` with the value rows
as its B operand. A kv head's rows are 512 bytes every heads_kv * d * 4 bytes, a new 4 KB
page each, where the hardware prefetcher stops: the task prefetches the next block's rows
(``_prefetch``) while it computes this one (1.3x: profiles/README.md).

float32 and float64 caches with head_dim a multiple of 8 (others go through the gather
path of kvcache.py). Inputs are assumed valid: kvcache.py checks them.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._decode import BLOCK, merge, partials
from ._params import LOG2E, AttnParams
from .numba_flash import FASTMATH, _alibi, _exp2, _gemm, _set_threads, _tanh


def _make_dots(keys):
    """An intrinsic computing a 4 x ``keys`` tile of dot products along rows:
    S[i, r] = sum_{e < d} Q[i, e] * K[r, e] for i < 4, r < keys, where
    S[i, r] = s.flat[s_off + i*s_ldi + r*s_ldr], Q[i, e] = q.flat[q_off + i*ldq + e],
    K[r, e] = k.flat[k_off + r*ldk + e]; d a multiple of 32 bytes' worth of elements.
    Both operands are read along their rows in vectors (a key row straight from the
    cache, no transpose), 4 x keys accumulators held in registers, summed at the end."""

    @intrinsic
    def dots(typingctx, s, s_off, s_ldi, s_ldr, q, q_off, ldq, k, k_off, ldk, d):
        ints = (s_off, s_ldi, s_ldr, q_off, ldq, k_off, ldk, d)
        if not all(isinstance(t, types.Integer) for t in ints):
            return None
        sig = types.void(s, s_off, s_ldi, s_ldr, q, q_off, ldq, k, k_off, ldk, d)

        def codegen(context, builder, signature, args):
            i64 = ir.IntType(64)
            s_off_, s_ldi_, s_ldr_, q_off_, ldq_, k_off_, ldk_, d_ = (
                context.cast(builder, args[i], signature.args[i], types.int64)
                for i in (1, 2, 3, 5, 6, 8, 9, 10))
            ftype = context.get_value_type(s.dtype)
            width = 32 // (s.dtype.bitwidth // 8)
            vtype = ir.VectorType(ftype, width)
            align = s.dtype.bitwidth // 8
            sp, qp, kp = (context.make_array(t)(context, builder, args[i]).data
                          for t, i in ((s, 0), (q, 4), (k, 7)))
            fmuladd = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vtype, [vtype] * 3),
                f"llvm.fmuladd.v{width}f{s.dtype.bitwidth}")

            def const(v):
                return ir.Constant(i64, v)

            def load(base, offset):
                ptr = builder.bitcast(builder.gep(base, [offset]), vtype.as_pointer())
                return builder.load(ptr, align=align)

            accs = [[cgutils.alloca_once_value(builder, ir.Constant(vtype, None))
                     for _ in range(keys)] for _ in range(4)]
            with cgutils.for_range_slice(builder, const(0), d_, const(width)) as (e, _):
                kvecs = [load(kp, builder.add(builder.add(k_off_, builder.mul(ldk_, const(r))),
                                              e)) for r in range(keys)]
                for i in range(4):
                    qvec = load(qp, builder.add(builder.add(q_off_, builder.mul(ldq_, const(i))),
                                                e))
                    for r in range(keys):
                        slot = accs[i][r]
                        builder.store(builder.call(fmuladd, [qvec, kvecs[r],
                                                             builder.load(slot)]), slot)
            for i in range(4):
                for r in range(keys):
                    v, n = builder.load(accs[i][r]), width
                    while n > 1:  # pairwise: lanes [0, n/2) + [n/2, n)
                        n //= 2
                        lo = builder.shuffle_vector(v, v, ir.Constant(
                            ir.VectorType(ir.IntType(32), n), list(range(n))))
                        hi = builder.shuffle_vector(v, v, ir.Constant(
                            ir.VectorType(ir.IntType(32), n), list(range(n, 2 * n))))
                        v = builder.fadd(lo, hi)
                    total = builder.extract_element(v, ir.Constant(ir.IntType(32), 0))
                    where = builder.add(s_off_, builder.add(builder.mul(s_ldi_, const(i)),
                                                            builder.mul(s_ldr_, const(r))))
                    builder.store(total, builder.gep(sp, [where]))
            return context.get_dummy_value()

        return sig, codegen

    return dots


# 4 query rows x 2 keys: 8 accumulators + 2 key vectors + 1 query vector of 16 registers
_dots2, _dots1 = _make_dots(2), _make_dots(1)


@intrinsic
def _prefetch(typingctx, x, offset):
    """Hints the CPU to bring x.flat[offset]'s cache line in (no fault if out of range)."""
    if not isinstance(offset, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        ptr = context.make_array(x)(context, builder, args[0]).data
        off = context.cast(builder, args[1], signature.args[1], types.int64)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
            ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(builder.gep(ptr, [off]), i8p), ir.Constant(i32, 0),
                          ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(x, offset), codegen


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _decode(q, kc, vc, pages, page, ends, starts, group, win_left, win_right, qk_scale, cap,
            slopes, alibi, splits, o_part, lse_part):
    """q (B, Sq, H, D); kc, vc (N, page, Hkv, D) with unit stride in D; pages (B, blocks)
    int64; ends, starts (B,) the visible rows [starts[b], ends[b]); windows >= 0 (UNBOUNDED
    for none), in rows of the cache, aligned so that query r sits at row r + ends[b] - Sq.
    D must be a multiple of 8. Writes o_part (splits, B, H, Sq, D), each split's
    softmax-normalised output, and lse_part (splits, B, H, Sq) in log2 units (-inf for a
    split with no visible key)."""
    batch, sq, heads, d = q.shape
    heads_kv = kc.shape[2]
    rows = group * sq
    rows4 = (rows + 3) // 4 * 4  # the microkernels take query rows 4 at a time
    item = kc.itemsize
    k_page, k_row, k_head = kc.strides[0] // item, kc.strides[1] // item, kc.strides[2] // item
    v_page, v_row, v_head = vc.strides[0] // item, vc.strides[1] // item, vc.strides[2] // item
    neg_inf = -np.inf
    zero = np.zeros(1, kc.dtype)[0]
    for t in prange(batch * heads_kv * splits):
        split, hk, b = t % splits, (t // splits) % heads_kv, t // (splits * heads_kv)
        end, start = ends[b], starts[b]
        chunk = ((end - start + splits - 1) // splits + BLOCK - 1) // BLOCK * BLOCK
        lo = start + split * chunk
        hi = min(end, lo + chunk)
        # the group's query rows m = g * sq + r, zero-padded to rows4
        qb = np.zeros((rows4, d), kc.dtype)
        for m in range(rows):
            for e in range(d):
                qb[m, e] = q[b, m % sq, hk * group + m // sq, e] * qk_scale
        acc = np.zeros((rows4, d), kc.dtype)
        mx = np.full(rows, neg_inf, kc.dtype)
        den = np.zeros(rows, kc.dtype)
        s = np.zeros((rows4, BLOCK), kc.dtype)
        bias = np.zeros(BLOCK, kc.dtype)
        for j0 in range(lo, hi, BLOCK):
            n = min(BLOCK, hi - j0)
            for j in range(j0 + BLOCK, min(hi, j0 + 2 * BLOCK)):  # the next block's rows
                pg, r0 = pages[b, j // page], j % page
                for e in range(0, d, 64 // item):
                    _prefetch(kc, pg * k_page + r0 * k_row + hk * k_head + e)
                    _prefetch(vc, pg * v_page + r0 * v_row + hk * v_head + e)
            # S = Q K^T, each key row read once for the whole group, one page's run at a time
            c = 0
            while c < n:
                j = j0 + c
                run = min(n - c, page - j % page)
                base = pages[b, j // page] * k_page + j % page * k_row + hk * k_head
                for i in range(0, rows4, 4):
                    for r in range(0, run - 1, 2):
                        _dots2(s, i * BLOCK + c + r, BLOCK, 1, qb, i * d, d, kc,
                               base + r * k_row, k_row, d)
                    if run % 2:
                        _dots1(s, i * BLOCK + c + run - 1, BLOCK, 1, qb, i * d, d, kc,
                               base + (run - 1) * k_row, k_row, d)
                c += run
            # online softmax per query row; hidden keys get p = 0
            for m in range(rows):
                g, r = m // sq, m % sq
                pos = r + end - sq
                if alibi != 0:  # positions from cache_leftpad, as flash-attn's
                    _alibi(bias, alibi, slopes[b % slopes.shape[0], hk * group + g],
                           pos - start, j0 - start)
                m_new = mx[m]
                for c in range(n):
                    j = j0 + c
                    if pos - win_left <= j <= pos + win_right:
                        v = s[m, c]
                        if cap > 0:
                            v = cap * _tanh(v)
                        if alibi != 0:
                            v += bias[c]
                        s[m, c] = v
                        m_new = max(m_new, v)
                    else:
                        s[m, c] = neg_inf
                if m_new == neg_inf:  # nothing visible in this block for this row
                    for c in range(n):
                        s[m, c] = zero
                    continue
                alpha = _exp2(mx[m] - m_new)
                total = zero
                for c in range(n):
                    p = _exp2(s[m, c] - m_new)
                    s[m, c] = p
                    total += p
                den[m] = den[m] * alpha + total
                mx[m] = m_new
                for e in range(d):
                    acc[m, e] *= alpha
            # acc += P V, each value row read once for the whole group
            c = 0
            while c < n:
                j = j0 + c
                run = min(n - c, page - j % page)
                _gemm(acc, 0, d, s, c, BLOCK, 1, vc,
                      pages[b, j // page] * v_page + j % page * v_row + hk * v_head, v_row,
                      rows4, d, run, True)
                c += run
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
    page], j % page]); params bounded; num_splits 0 = _decode.choose_splits."""
    _set_threads()
    dtype = k_cache.dtype
    ftype = np.float64 if dtype == torch.float64 else np.float32
    heads, heads_kv = q.shape[2], k_cache.shape[2]
    splits, o_part, lse_part = partials(q, heads_kv, ends, starts, num_splits,
                                        numba.get_num_threads(), dtype)
    if alibi_slopes is None:
        slopes, alibi = np.zeros((1, 1), ftype), 0
    else:
        slopes = (alibi_slopes.detach().double().reshape(-1, heads) * LOG2E).numpy().astype(ftype)
        alibi = 1 if params.alibi_causal else 2
    _decode(q.detach().to(dtype).numpy(), k_cache.detach().numpy(), v_cache.detach().numpy(),
            pages.numpy(), page, ends.numpy(), starts.numpy(), heads // heads_kv,
            *params.kernel_window, ftype(params.qk_scale), ftype(params.cap_log2), slopes,
            alibi, splits, o_part.numpy(), lse_part.numpy())
    return merge(o_part, lse_part, q.dtype)
