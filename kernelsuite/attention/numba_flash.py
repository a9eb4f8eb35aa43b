"""Flash attention forward and backward in Numba, for CPU tensors (FlashAttention-2 algorithm).

The same method as the Triton kernels (triton_flash.py), laid out for a CPU:

- Every matrix product goes through one register-blocked microkernel (``_make_tile``): 6 rows
  of C times 128 bytes of columns with AVX-512 (64 without), the accumulators held in
  registers across the whole reduction. It is written as LLVM vector IR through numba's
  ``@intrinsic`` because plain Numba loops cannot hold a tile of accumulators in registers:
  LLVM either vectorizes the reduction with gathers or spills every accumulator (measured
  on an AVX2 box, one core: 4-60 GFLOP/s for the best plain-loop forms, ~90 for this one,
  93 for a torch float32 matmul). The vector type is generic LLVM, so it compiles for any
  CPU.
- exp2 and tanh are a polynomial plus an exponent bit trick (``_exp2``), so the softmax
  loops vectorize: Numba has no vector exp without Intel's SVML. float64 uses libm.
- Scores are kept in log2 units (scale * log2(e) folded in), as in the Triton kernels.
- Threads take tasks from a queue (an atomic counter, ``_take``), costliest first, rather
  than a fixed share each: a thread whose core another process also runs does less of the
  work instead of stalling the call.
- forward: parallel over (sequence, query block, head) tasks; each runs the online softmax
  over the key blocks its rows can see (causal / window blocks outside the band are
  skipped; only blocks on the band's edge are masked) and never holds more than one
  (BLOCK_M, BLOCK_N) score tile.
- backward: recomputes P from the saved LSE; delta = rowsum(dO * O) - dLSE. Parallel over
  (sequence, kv head, chunk of key blocks); a task owns dK/dV of its key blocks (summing
  the GQA group's query heads) and adds dQ into its chunk's float32 buffer, so no two
  threads ever write the same memory. There is one chunk unless there are fewer
  (sequence, kv head) pairs than threads.

Inputs are first copied to head-major float32 (float64 for float64 inputs) buffers padded
by one block (K and V; in the backward also Q and dO), so kernels read whole tiles without
bounds checks: extra memory is O(seqlen), a few times the size of q, k, v. Each thread
keeps these buffers between calls (up to SCRATCH_MAX_BYTES each, see _scratch). Dense
(batch, seqlen, heads, d) inputs are seen as varlen with equal lengths. Inputs are assumed
valid: the api module checks them.
"""

from __future__ import annotations

import math
import threading
from types import FunctionType

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils, config
from numba.core.codegen import get_host_cpu_features
from numba.extending import intrinsic, overload

from . import _dropout
from ._params import LN2, LOG2E, UNBOUNDED, AttnParams
from .reference import lse_dtype

BLOCK_M = 64  # query rows per tile (the forward takes 128 when there is no mask: +3-8%)
BLOCK_N = 64  # keys per tile
KC = 64  # reduction length per microkernel call: keeps the B panel in L1
# fast-math without 'nnan'/'ninf': masked scores are -inf and must stay -inf
FASTMATH = {"contract", "reassoc", "nsz", "arcp"}


# ----------------------------------------------------------------------------- microkernel


def _make_tile(rows, vector_bytes):
    """An intrinsic computing one rows x NR tile of C, NR = vector_bytes // itemsize."""

    @intrinsic
    def tile(typingctx, c, c_off, ldc, a, a_off, sa_m, sa_k, b, b_off, ldb, k, accumulate):
        """C[i, j] (+)= sum_{p < k} A[i, p] * B[p, j] for i < rows, j < NR, where
        C[i, j] = c.flat[c_off + i*ldc + j], A[i, p] = a.flat[a_off + i*sa_m + p*sa_k],
        B[p, j] = b.flat[b_off + p*ldb + j]. Arrays C-contiguous of one float dtype."""
        ints = (c_off, ldc, a_off, sa_m, sa_k, b_off, ldb, k)
        if not all(isinstance(t, types.Integer) for t in ints):
            return None
        sig = types.void(c, c_off, ldc, a, a_off, sa_m, sa_k, b, b_off, ldb, k, accumulate)

        def codegen(context, builder, signature, args):
            i64 = ir.IntType(64)
            c_, a_, b_, accum = args[0], args[3], args[7], args[11]
            c_off_, ldc_, a_off_, sa_m_, sa_k_, b_off_, ldb_, k_ = (
                context.cast(builder, args[i], signature.args[i], types.int64)
                for i in (1, 2, 4, 5, 6, 8, 9, 10))
            ftype = context.get_value_type(c.dtype)
            width = vector_bytes // (c.dtype.bitwidth // 8)
            vtype = ir.VectorType(ftype, width)
            align = c.dtype.bitwidth // 8
            cp = context.make_array(c)(context, builder, c_).data
            ap = context.make_array(a)(context, builder, a_).data
            bp = context.make_array(b)(context, builder, b_).data
            fmuladd = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vtype, [vtype] * 3),
                f"llvm.fmuladd.v{width}f{c.dtype.bitwidth}")
            zero_mask = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
            accumulate_ = context.cast(builder, accum, signature.args[11], types.boolean)

            def vec_ptr(base, offset):
                return builder.bitcast(builder.gep(base, [offset]), vtype.as_pointer())

            accs = []  # allocas: mem2reg turns them into registers
            for i in range(rows):
                slot = cgutils.alloca_once(builder, vtype)
                ptr = vec_ptr(cp, builder.add(c_off_, builder.mul(ldc_, ir.Constant(i64, i))))
                with builder.if_else(accumulate_) as (then, otherwise):
                    with then:
                        builder.store(builder.load(ptr, align=align), slot)
                    with otherwise:
                        builder.store(ir.Constant(vtype, None), slot)
                accs.append((slot, ptr))
            with cgutils.for_range(builder, k_) as loop:
                p = loop.index
                bvec = builder.load(vec_ptr(bp, builder.add(b_off_, builder.mul(p, ldb_))),
                                    align=align)
                a_row = builder.add(a_off_, builder.mul(p, sa_k_))
                for i, (slot, _) in enumerate(accs):
                    a_ptr = builder.gep(ap, [builder.add(a_row,
                                                         builder.mul(sa_m_, ir.Constant(i64, i)))])
                    one = builder.insert_element(ir.Constant(vtype, ir.Undefined),
                                                 builder.load(a_ptr),
                                                 ir.Constant(ir.IntType(32), 0))
                    splat = builder.shuffle_vector(one, ir.Constant(vtype, ir.Undefined), zero_mask)
                    builder.store(builder.call(fmuladd, [splat, bvec, builder.load(slot)]), slot)
            for slot, ptr in accs:
                builder.store(builder.load(slot), ptr, align=align)
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _vector_bytes() -> int:
    """Bytes of C's row a tile spans: 128 (two 512-bit registers) where numba compiles for
    AVX-512, else 64 (two AVX2 registers). Taken from the CPU numba targets (its
    NUMBA_CPU_NAME / NUMBA_CPU_FEATURES settings included), the key of its cache too."""
    if config.CPU_FEATURES is not None:
        features = config.CPU_FEATURES
    elif config.CPU_NAME is not None:  # a named CPU (e.g. 'generic'): features unknown here
        features = ""
    else:
        features = get_host_cpu_features()
    return 128 if "+avx512f" in features.split(",") else 64


# 6 rows x 2 registers: 12 accumulators + 2 for B + 1 broadcast (of 16 AVX2 or 32 AVX-512
# registers); one core's rate on a Zen 5 (AVX-512): 180 GFLOP/s with 64-byte rows, 255 with
# 128 (torch's float32 matmul: ~100). 4-row tiles finish the rows, narrower ones the columns
# (head_dim is a multiple of 8).
VECTOR_BYTES = _vector_bytes()
_tile6_wide, _tile4_wide = _make_tile(6, 128), _make_tile(4, 128)
_tile6, _tile4 = _make_tile(6, 64), _make_tile(4, 64)
_tile6_half, _tile4_half = _make_tile(6, 32), _make_tile(4, 32)


@njit(cache=True)
def _gemm(c, c_off, ldc, a, a_off, sa_m, sa_k, b, b_off, ldb, m, n, k, accumulate):
    """C (m x n) (+)= A (m x k) @ B (k x n), strided as in ``_make_tile``.

    m must be a multiple of 4 and n of 32 bytes; the memory those rounded tiles touch must
    exist (the callers pad their buffers).
    """
    size = c.itemsize
    six = 6 * (m // 6 if m % 6 != 2 else m // 6 - 1)  # rows in 6-row tiles; 4-row tiles after
    if k == 0:
        if not accumulate:
            for i in range(m):
                for j in range(n):
                    c.flat[c_off + i * ldc + j] = 0
        return
    for p0 in range(0, k, KC):
        kc = min(KC, k - p0)
        acc = accumulate or p0 > 0
        j = 0
        while j < n:
            span = (n - j) * size  # bytes of the row left: the widest tile that fits
            width = VECTOR_BYTES if span >= VECTOR_BYTES else 64 if span >= 64 else 32
            i = 0
            while i < m:
                args = (c, c_off + i * ldc + j, ldc, a, a_off + i * sa_m + p0 * sa_k, sa_m, sa_k,
                        b, b_off + p0 * ldb + j, ldb, kc, acc)
                if i < six:
                    if width == 128:
                        _tile6_wide(*args)
                    elif width == 64:
                        _tile6(*args)
                    else:
                        _tile6_half(*args)
                    i += 6
                else:
                    if width == 128:
                        _tile4_wide(*args)
                    elif width == 64:
                        _tile4(*args)
                    else:
                        _tile4_half(*args)
                    i += 4
            j += width // size


@intrinsic
def _max_of(typingctx, a, off, n, init):
    """max(init, a.flat[off:off + n]) in 64-byte vectors (llvm.maxnum: a NaN element is
    passed over; the softmax turns it into a NaN row anyway); n a multiple of 64 bytes. A
    plain max loop is a serial compare-and-select chain that LLVM vectorizes only under
    'nnan': 4 cycles per score, 30% of a forward block's time."""
    if not (isinstance(a, types.Array) and isinstance(off, types.Integer)
            and isinstance(n, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        bits = a.dtype.bitwidth
        ftype = context.get_value_type(a.dtype)
        width = 512 // bits
        vtype = ir.VectorType(ftype, width)
        data = context.make_array(a)(context, builder, args[0]).data
        off_ = context.cast(builder, args[1], signature.args[1], types.int64)
        n_ = context.cast(builder, args[2], signature.args[2], types.int64)
        init_ = context.cast(builder, args[3], signature.args[3], a.dtype)
        maxnum = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vtype, [vtype, vtype]), f"llvm.maxnum.v{width}f{bits}")
        slot = cgutils.alloca_once(builder, vtype)
        splat = ir.Constant(vtype, ir.Undefined)
        for i in range(width):
            splat = builder.insert_element(splat, init_, ir.Constant(ir.IntType(32), i))
        builder.store(splat, slot)
        with cgutils.for_range(builder, builder.sdiv(n_, ir.Constant(i64, width))) as loop:
            at = builder.add(off_, builder.mul(loop.index, ir.Constant(i64, width)))
            ptr = builder.bitcast(builder.gep(data, [at]), vtype.as_pointer())
            vec = builder.load(ptr, align=bits // 8)
            builder.store(builder.call(maxnum, [builder.load(slot), vec]), slot)
        # across the lanes by halving (llvm.vector.reduce.fmax without 'nnan' is a serial
        # chain of scalar maxnums: 60 cycles for 16 lanes)
        vec = builder.load(slot)
        half = width // 2
        while half:
            mask = [half + i % half for i in range(width)]
            upper = builder.shuffle_vector(vec, ir.Constant(vtype, ir.Undefined),
                                           ir.Constant(ir.VectorType(ir.IntType(32), width), mask))
            vec = builder.call(maxnum, [vec, upper])
            half //= 2
        return builder.extract_element(vec, ir.Constant(ir.IntType(32), 0))

    return a.dtype(a, off, n, init), codegen


# ----------------------------------------------------------------------------- exp2, tanh


def _exp2_coefficients(degree=6):
    """2**f ~ 1 + f * (least-squares fit of (2**f - 1) / f at Chebyshev nodes on [-1/2, 1/2]):
    exactly 1 at 0, max relative error 9.5e-8 evaluated in float32. The fifth degree's
    2.9e-7 showed: a row whose softmax one key dominates (P ~ 1) had dV and dK errors 3x
    torch SDPA's; the sixth costs one FMA per score."""
    f = 0.5 * np.cos(np.pi * (np.arange(64) + 0.5) / 64)
    fit = np.polynomial.polynomial.polyfit(f, (np.exp2(f) - 1) / f, degree - 1)
    return tuple(np.float32(c) for c in (1.0, *fit))


_C0, _C1, _C2, _C3, _C4, _C5, _C6 = _exp2_coefficients()


@intrinsic
def _f32_from_bits(typingctx, bits):
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


def _exp2(x):
    """2**x; exactly 0 for x < -126.5 (so a masked -inf score gives p = 0); NaN for NaN."""
    return np.exp2(x)


def _tanh(x):
    return np.tanh(x)


def _float32_version(func):
    """Decorator: in Numba code, func (one of the above) of a float32 runs the decorated
    function (fast-math polynomials); of another type, func's own numpy body (libm)."""

    def register(f32):
        overload(func, fastmath=FASTMATH)(lambda x: f32 if x == types.float32 else func)
        return f32

    return register


@_float32_version(_exp2)
def _exp2_f32(x):
    # 2**x = 2**n * 2**f with n = round(x), |f| <= 1/2; 2**n built from its exponent
    # bits. Below -126.5, n = -127 gives exponent bits 0: the result is exactly 0.
    # Valid for x < 128 (softmax arguments are <= 0; _tanh clamps its own).
    xc = max(x, np.float32(-127.0))
    n = np.rint(xc)
    f = xc - n
    p = ((((((_C6 * f + _C5) * f + _C4) * f + _C3) * f + _C2) * f + _C1) * f + _C0)
    y = p * _f32_from_bits(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))
    return y if x == x else x  # a NaN score stays NaN (the clamp above would hide it)


@_float32_version(_tanh)
def _tanh_f32(x):
    # 1 - 2 / (e^(2x) + 1), absolute error ~1e-7; |x| >= 10 is +-1 in float32
    xc = min(max(x, np.float32(-10.0)), np.float32(10.0))
    y = np.float32(1.0) - np.float32(2.0) / (_exp2(xc * np.float32(2.0 * LOG2E))
                                            + np.float32(1.0))
    return y if x == x else x


# ----------------------------------------------------------------------------- ALiBi, dropout

_M32 = 0xFFFFFFFF


@njit(cache=True, inline="always")
def _mul_hi_lo(a, b):
    """(high, low) 32-bit halves of a * b, a a 32-bit constant, b in [0, 2**32), in int64
    (as _dropout._mul)."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    lo_part, hi_part = b * a_lo, b * a_hi
    return (hi_part + (lo_part >> 16)) >> 16, (((hi_part & 0xFFFF) << 16) + lo_part) & _M32


@njit(cache=True, inline="always")
def _kept(seed, col, row, head, offset, thr):
    """Dropout keeps this entry: _dropout.keep_mask for one (col, row, head, offset), the
    same Philox4x32-10 word for word (counter (col // 4, row, head, offset), word col % 4)."""
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    c0, c1, c2, c3 = (col >> 2) & _M32, row & _M32, head & _M32, offset & _M32
    for _ in range(_dropout.ROUNDS):
        hi_b, lo_b = _mul_hi_lo(_dropout.ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_dropout.ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _dropout.KEY_A) & _M32, (k1 + _dropout.KEY_B) & _M32
    lane = col & 3
    r = c0 if lane == 0 else c1 if lane == 1 else c2 if lane == 2 else c3
    return (r >> 1) >= thr


@njit(cache=True, inline="always")
def _alibi(bias, alibi, slope2, pos, j):
    """bias[c] = ALiBi of key j + c for the query at key position pos, log2 units: alibi 1
    is flash-attn's causal form (+ slope * col), 2 the distance form, 0 none."""
    for c in range(bias.shape[0]):
        if alibi == 1:
            bias[c] = slope2 * (j + c)
        elif alibi == 2:
            bias[c] = -slope2 * abs(pos - j - c)
        else:
            bias[c] = 0


# ----------------------------------------------------------------------------- kernels


@intrinsic
def _take(typingctx, counter):
    """Atomically counter[0] += 1 (int64); returns the value before: the next task of a
    queue that threads empty at their own pace."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        ptr = context.make_array(signature.args[0])(context, builder, args[0]).data
        return builder.atomic_rmw("add", ptr, ir.Constant(ir.IntType(64), 1), "monotonic")

    return types.int64(counter), codegen


@njit(cache=True)
def _query_blocks(cu_q, cu_k, block_m, win_left, win_right):
    """(sequence, first row) of every query block, the costliest first (by key blocks
    visited). Threads take tasks from this list as they finish the last (``_take``), so a
    thread slowed by another process does less of the work instead of stalling the call,
    and the long tasks do not come last (longest-processing-time-first balance)."""
    n = 0
    for b in range(cu_q.shape[0] - 1):
        n += (cu_q[b + 1] - cu_q[b] + block_m - 1) // block_m
    tasks = np.empty((n, 2), np.int64)
    cost = np.empty(n, np.int64)
    t = 0
    for b in range(cu_q.shape[0] - 1):
        ql, kl = cu_q[b + 1] - cu_q[b], cu_k[b + 1] - cu_k[b]
        for i0 in range(0, ql, block_m):
            rows = min(block_m, ql - i0)
            lo = max(0, i0 + kl - ql - win_left)
            hi = min(kl, i0 + rows - 1 + kl - ql + win_right + 1)
            tasks[t, 0] = b
            tasks[t, 1] = i0
            cost[t] = 1 + max(0, hi - (lo // BLOCK_N) * BLOCK_N)
            t += 1
    return tasks[np.argsort(-cost, kind="mergesort")]


@njit(cache=True, inline="always")
def _on_edge(j, bn, kl, i0, rows, off, win_left, win_right):
    """Whether key block [j, j + bn) needs the mask for query rows i0 .. i0 + rows - 1: it
    crosses the end of the keys or an edge of the visible band (blocks wholly outside the
    band are never visited)."""
    return (j + bn > kl or j < i0 + rows - 1 + off - win_left
            or j + bn - 1 > i0 + off + win_right)


@njit(cache=True, inline="always")
def _hidden(col, pos, kl, win_left, win_right):
    """Whether key col is masked for the query at key position pos."""
    return col >= kl or col < pos - win_left or col > pos + win_right


@njit(cache=True)
def _load_block(dst, x, row0, rows, x_st, x_sh, h):
    """dst[:rows] = x's rows row0.. of head h (x flat: element (t, h, c) at
    t*x_st + h*x_sh + c); dst[rows:] = 0. Kernels read whole blocks from dst, never past a
    sequence's end in x."""
    d = dst.shape[1]
    for r in range(rows):
        base = (row0 + r) * x_st + h * x_sh
        for c in range(d):
            dst[r, c] = x[base + c]
    dst[rows:] = 0


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _forward(q, q_st, q_sh, kt, v, out, lse, cu_q, cu_k, group, win_left, win_right,
             qk_scale, cap, bm, exact, slopes, alibi, drop, workers):
    """out (Tq, Hq, d) and lse (Hq, Tq) from q flat (element (t, h, c) at t*q_st + h*q_sh + c),
    kt (Hkv, d, Tk + BLOCK_N) and v (Hkv, Tk + BLOCK_N, d) (see _head_major). q.k * qk_scale
    is the score in log2 units, or its softcap tanh argument when cap > 0 (scores =
    cap * tanh(...)).
    Windows are >= 0 (UNBOUNDED for none). bm: query rows per task, a multiple of 4.
    exact: v holds a NaN or Inf, so edge blocks multiply P by V key by key, skipping hidden
    keys (P = 0 times NaN would reach rows that cannot see that key). slopes (batch or 1,
    Hq) ALiBi slopes in log2 units, alibi its form (see _alibi); drop (seed, offset,
    threshold, 1 / (1 - dropout_p)) as in _dropout, threshold 0 without dropout. workers:
    numba's thread count."""
    heads, d = out.shape[1], out.shape[2]
    tk_pad = kt.shape[2]
    bn = BLOCK_N
    tasks = _query_blocks(cu_q, cu_k, bm, win_left, win_right)
    n_tasks = tasks.shape[0] * heads
    neg_inf = -np.inf
    zero = np.zeros(1, kt.dtype)[0]  # float32 stays float32
    seed, offset, thr, drop_scale = drop
    taken = np.zeros(1, np.int64)
    for _ in prange(workers):  # one per thread, each taking tasks until none is left
        q_blk = np.empty((bm, d), kt.dtype)
        s = np.empty((bm, bn), kt.dtype)
        acc = np.empty((bm, d), kt.dtype)
        pv = np.empty((bm, d), kt.dtype)
        m = np.empty(bm, kt.dtype)
        m_blk = np.empty(bm, kt.dtype)  # per row: the block's max, then the rescale factor
        den = np.empty(bm, kt.dtype)
        bias = np.empty(bn, kt.dtype)
        t = _take(taken)
        while t < n_tasks:
            b, i0, h = tasks[t // heads, 0], tasks[t // heads, 1], t % heads
            kvh = h // group
            qs, ks = cu_q[b], cu_k[b]
            ql, kl = cu_q[b + 1] - qs, cu_k[b + 1] - ks
            rows = min(bm, ql - i0)
            m4 = (rows + 3) // 4 * 4  # rows the products compute (short blocks: fewer)
            off = kl - ql  # row i sits at key position i + off (bottom-right alignment)
            lo = max(0, i0 + off - win_left)
            hi = min(kl, i0 + rows - 1 + off + win_right + 1)
            _load_block(q_blk, q, qs + i0, rows, q_st, q_sh, h)
            acc[:] = 0
            m[:] = neg_inf
            den[:] = 0
            slope2 = slopes[b % slopes.shape[0], h]
            j = (lo // bn) * bn
            while j < hi:
                _gemm(s, 0, bn, q_blk, 0, d, 1, kt, kvh * d * tk_pad + ks + j, tk_pad, m4, bn,
                      d, False)
                edge = _on_edge(j, bn, kl, i0, rows, off, win_left, win_right)
                for r in range(rows):
                    row = s[r]
                    # the scale on the scores, not on q: q * scale rounded each element
                    # of q, which the exp amplified (1.5x the error of rows with few keys)
                    for c in range(bn):
                        row[c] *= qk_scale
                    if cap > 0:
                        for c in range(bn):
                            row[c] = cap * _tanh(row[c])
                    if alibi != 0:
                        _alibi(bias, alibi, slope2, i0 + r + off, j)
                        for c in range(bn):
                            row[c] += bias[c]
                    if edge:
                        pos = i0 + r + off
                        for c in range(bn):
                            if _hidden(j + c, pos, kl, win_left, win_right):
                                row[c] = neg_inf
                    # every row's maximum before any exp: a row's max and its exp loop
                    # in one pass made a chain the core could not overlap (1.3x the block)
                    m_blk[r] = _max_of(s, r * bn, bn, m[r])
                for r in range(rows):
                    row = s[r]
                    m_new = m_blk[r]
                    # a row that has seen no key yet keeps p = 0 (exp2(-inf - 0)), not NaN
                    shift = m_new if m_new > neg_inf else zero
                    total = zero
                    for c in range(bn):
                        p = _exp2(row[c] - shift)
                        row[c] = p
                        total += p
                    alpha = _exp2(m[r] - shift)  # online-softmax rescale of what came before
                    den[r] = den[r] * alpha + total
                    m[r] = m_new
                    if thr > 0:  # dropout after the softmax sums: P @ V sees kept entries
                        for c in range(bn):
                            if not _kept(seed, j + c, qs + i0 + r, h, offset, thr):
                                row[c] = 0
                    m_blk[r] = alpha
                # acc = acc * alpha + P V, the block's P V summed on its own first: adding
                # every product straight into acc rounds against its growing size, as
                # many times as there are keys
                if exact and edge:
                    for r in range(rows):
                        pos = i0 + r + off
                        for e in range(d):
                            acc[r, e] *= m_blk[r]
                        for c in range(min(bn, kl - j)):
                            if not _hidden(j + c, pos, kl, win_left, win_right):
                                for e in range(d):
                                    acc[r, e] += s[r, c] * v[kvh, ks + j + c, e]
                else:
                    _gemm(pv, 0, d, s, 0, bn, 1, v, (kvh * tk_pad + ks + j) * d, d, m4, d,
                          min(bn, kl - j), False)
                    for r in range(rows):
                        alpha = m_blk[r]
                        for e in range(d):
                            acc[r, e] = acc[r, e] * alpha + pv[r, e]
                j += bn
            for r in range(rows):
                i = qs + i0 + r
                if den[r] != 0:  # NaN too: a NaN score makes the row NaN
                    inv = drop_scale / den[r]
                    for c in range(d):
                        out[i, h, c] = acc[r, c] * inv
                    lse[h, i] = (m[r] + np.log2(den[r])) * LN2
                else:  # sees no key: 0; its visible scores all -inf (an Inf input): NaN
                    pos = i0 + r + off
                    seen = min(kl, pos + win_right + 1) > max(0, pos - win_left)
                    fill = np.nan if seen else 0
                    for c in range(d):
                        out[i, h, c] = fill
                    lse[h, i] = neg_inf
            t = _take(taken)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _backward(q, k, kt, vt, do, lse2, delta, dlse, dq_part, dk,
              dv, cu_q, cu_k, group, win_left, win_right, qk_scale, cap, exact, slopes, alibi,
              drop, workers):
    """q, do (Hq, Tq + BLOCK_N, d) and k (Hkv, Tk + BLOCK_N, d) head-major (their blocks'
    rows contiguous: the products read them in place), kt, vt (Hkv, d, Tk + BLOCK_N);
    lse2 (Hq, Tq) the LSE in log2 units; delta (Hq, Tq) = rowsum(dO * O) - dLSE, dlse
    (Hq, Tq) the dLSE alone. Adds dS @ K (dQ / softmax_scale) into dq_part
    (chunks, Hq, Tq, d), zeroed by the caller (head-major: a block's rows are contiguous;
    rows Hq * d apart cost 10% at head_dim 128); writes dk (dS^T Q, so also up to the
    softmax scale) and dv (Tk, Hkv, d). exact: an input holds a NaN or Inf, so edge
    blocks form dV, dK and dQ key by key, skipping hidden (query, key) pairs. slopes,
    alibi, drop, workers as in _forward."""
    heads_kv, d = dk.shape[1], dk.shape[2]
    tk_pad, tq_pad = kt.shape[2], q.shape[1]
    chunks = dq_part.shape[0]
    bm, bn = BLOCK_M, BLOCK_N
    seed, offset, thr, drop_scale = drop
    # tasks (sequence, kv head, chunk), the longest sequences first (see _query_blocks)
    sizes = (cu_q[1:] - cu_q[:-1]) * (cu_k[1:] - cu_k[:-1])
    order = np.argsort(-sizes, kind="mergesort")
    n_tasks = order.shape[0] * heads_kv * chunks
    taken = np.zeros(1, np.int64)
    for _ in prange(workers):  # one per thread, each taking tasks until none is left
        p = np.empty((bm, bn), kt.dtype)
        ds = np.empty((bm, bn), kt.dtype)
        dq_tile = np.empty((bm, d), kt.dtype)
        dk_acc = np.empty((bn, d), kt.dtype)
        dv_acc = np.empty((bn, d), kt.dtype)
        dk_tile = np.empty((bn, d), kt.dtype)
        dv_tile = np.empty((bn, d), kt.dtype)
        bias = np.zeros(bn, kt.dtype)
        kept = np.ones(bn, np.bool_)
        t = _take(taken)
        while t < n_tasks:
            chunk, kvh = t % chunks, (t // chunks) % heads_kv
            b = order[t // (chunks * heads_kv)]
            qs, ks = cu_q[b], cu_k[b]
            ql, kl = cu_q[b + 1] - qs, cu_k[b + 1] - ks
            off = kl - ql
            # a chunk takes every chunks-th key block: under a causal mask they cost about the same
            for j in range(chunk * bn, kl, chunks * bn):
                cols = min(bn, kl - j)
                k_off = kvh * d * tk_pad + ks + j  # into kt, vt
                dk_acc[:] = 0
                dv_acc[:] = 0
                # query rows that see some key of this block
                lo = max(0, j - off - win_right)
                hi = min(ql, j + cols - 1 - off + win_left + 1)
                for h in range(kvh * group, (kvh + 1) * group):
                    slope2 = slopes[b % slopes.shape[0], h]
                    i0 = (lo // bm) * bm
                    while i0 < hi:
                        rows = min(bm, ql - i0)
                        # rows past the sequence's end (up to m4) are read and their
                        # products ignored
                        m4 = (rows + 3) // 4 * 4
                        q_off = (h * tq_pad + qs + i0) * d  # into q, do
                        _gemm(p, 0, bn, q, q_off, d, 1, kt, k_off, tk_pad, m4, bn, d, False)
                        _gemm(ds, 0, bn, do, q_off, d, 1, vt, k_off, tk_pad, m4, bn, d, False)
                        edge = _on_edge(j, bn, kl, i0, rows, off, win_left, win_right)
                        for r in range(rows):
                            l2 = lse2[h, qs + i0 + r]
                            dl = delta[h, qs + i0 + r]
                            prow, dsrow = p[r], ds[r]
                            for c in range(bn):  # as in the forward
                                prow[c] *= qk_scale
                            if alibi != 0:
                                _alibi(bias, alibi, slope2, i0 + r + off, j)
                            if thr > 0:  # dP reaches kept entries only, scaled as in the forward
                                for c in range(bn):
                                    kept[c] = _kept(seed, j + c, qs + i0 + r, h, offset, thr)
                                    dsrow[c] = dsrow[c] * drop_scale if kept[c] else 0
                            pos = i0 + r + off
                            first = max(0, pos - win_left)
                            if first == min(kl - 1, pos + win_right) and j <= first < j + cols:
                                # the row sees one key: P = 1 there and O is its value row (times
                                # the dropout scale, or 0), so dS = dLSE exactly; rowsum(dO * O)
                                # and this dP would cancel only up to their rounding
                                dl = dsrow[first - j] - dlse[h, qs + i0 + r]
                            if cap > 0:
                                for c in range(bn):
                                    th = _tanh(prow[c])
                                    pc = _exp2(cap * th + bias[c] - l2)
                                    prow[c] = pc
                                    dsrow[c] = pc * (dsrow[c] - dl) * (1 - th * th)
                            else:
                                if alibi != 0:
                                    for c in range(bn):
                                        prow[c] += bias[c]
                                for c in range(bn):
                                    pc = _exp2(prow[c] - l2)
                                    prow[c] = pc
                                    dsrow[c] = pc * (dsrow[c] - dl)
                            if thr > 0:  # dV sums the kept P (scaled when stored)
                                for c in range(bn):
                                    if not kept[c]:
                                        prow[c] = 0
                            if edge:
                                for c in range(bn):
                                    if _hidden(j + c, pos, kl, win_left, win_right):
                                        prow[c] = 0
                                        dsrow[c] = 0
                        # dV += P^T dO; dK += dS^T Q; dQ tile = dS K (rows past the sequence end
                        # are never added: they belong to the next sequence)
                        if exact and edge:
                            dq_tile[:] = 0
                            for r in range(rows):
                                pos = i0 + r + off
                                for c in range(cols):
                                    if not _hidden(j + c, pos, kl, win_left, win_right):
                                        for e in range(d):
                                            dv_acc[c, e] += p[r, c] * do[h, qs + i0 + r, e]
                                            dk_acc[c, e] += ds[r, c] * q[h, qs + i0 + r, e]
                                            dq_tile[r, e] += ds[r, c] * k[kvh, ks + j + c, e]
                        else:  # each summed on its own, then added (see _forward)
                            _gemm(dv_tile, 0, d, p, 0, 1, bn, do, q_off, d, bn, d, rows, False)
                            _gemm(dk_tile, 0, d, ds, 0, 1, bn, q, q_off, d, bn, d, rows, False)
                            dv_acc += dv_tile
                            dk_acc += dk_tile
                            _gemm(dq_tile, 0, d, ds, 0, bn, 1, k, (kvh * tk_pad + ks + j) * d, d,
                                  m4, d, cols, False)
                        for r in range(rows):
                            for c in range(d):
                                dq_part[chunk, h, qs + i0 + r, c] += dq_tile[r, c]
                        i0 += bm
                for r in range(cols):
                    for c in range(d):
                        dk[ks + j + r, kvh, c] = dk_acc[r, c]
                        dv[ks + j + r, kvh, c] = dv_acc[r, c] * drop_scale
            t = _take(taken)


@njit(parallel=True, cache=True)
def _head_major(x, x_st, x_sh, out, transposed):
    """x's (T, H, d) elements (flat as in _forward) into out (H, T + BLOCK_N, d), or
    (H, d, T + BLOCK_N) when transposed, zero padded. Kernels read K and V blocks from
    these: rows strided by H * d in the input map to few cache sets and thrash L1."""
    heads = out.shape[0]
    d = out.shape[1] if transposed else out.shape[2]
    total = (out.shape[2] if transposed else out.shape[1]) - BLOCK_N
    blocks = (total + BLOCK_N - 1) // BLOCK_N
    for task in prange(heads * (blocks + 1)):  # + 1: the padding
        h, t0 = task // (blocks + 1), (task % (blocks + 1)) * BLOCK_N
        if t0 >= total:
            if transposed:
                out[h, :, total:] = 0
            else:
                out[h, total:] = 0
        elif transposed:
            for c in range(d):
                for t in range(t0, min(t0 + BLOCK_N, total)):
                    out[h, c, t] = x[t * x_st + h * x_sh + c]
        else:
            for t in range(t0, min(t0 + BLOCK_N, total)):
                src = t * x_st + h * x_sh
                for c in range(d):
                    out[h, t, c] = x[src + c]


# ----------------------------------------------------------------------------- launch


@njit(parallel=True, cache=True, fastmath={"reassoc"})  # a vector sum; no 'nnan': x - x stays
def _all_finite(x, x_st, x_sh, total, heads, d):
    """Whether the (total, heads, d) elements of x (flat as in _forward) are all finite: one
    read-only pass (x - x is 0 for a finite x, NaN for NaN and +-Inf)."""
    bad = 0
    zero = np.zeros(1, x.dtype)[0]
    for t in prange(total):
        z = zero
        for h in range(heads):
            base = t * x_st + h * x_sh
            for c in range(d):
                z += x[base + c] - x[base + c]
        if z != 0:
            bad += 1
    return bad == 0


# the copies and the check of small inputs on the calling thread alone: starting numba's
# threads costs more than they save below this many elements (a seqlen-16 head-major copy
# took 16 us in parallel)
PARALLEL_ELEMENTS = 1 << 16


def _serial(kernel, **options):
    """kernel's Python function compiled without parallel=True (prange runs as range), under
    a name of its own: numba's cache keys entries by the function's name and signature, not
    by its options, so the same function compiled twice would load one version for both."""
    name = kernel.py_func.__name__ + "_serial"
    func = FunctionType(kernel.py_func.__code__, kernel.py_func.__globals__, name)
    func.__qualname__ = name
    return njit(cache=True, **options)(func)


_head_major_serial = _serial(_head_major)
_all_finite_serial = _serial(_all_finite, fastmath={"reassoc"})


def _small(x) -> bool:
    return x.numel() < PARALLEL_ELEMENTS


def _set_threads():
    """Numba uses as many threads as torch does (torch.set_num_threads sets both). Numba's
    OpenMP layer starting its pool sets the process's OpenMP thread count, which torch
    reads as its own: torch's count is put back."""
    torch_threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(torch_threads, numba.config.NUMBA_NUM_THREADS)))
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)


SCRATCH_MAX_BYTES = 16 << 20
_SCRATCH = threading.local()


def _scratch(slot: int, shape, dtype) -> np.ndarray:
    """An uninitialised array for use within one call, from memory this thread keeps between
    calls (one buffer per slot, grown as needed, up to SCRATCH_MAX_BYTES; larger arrays are
    allocated per call). Fresh memory costs a page fault per 4 KB on first touch: on this
    project's 2-core VM the two 4 MB head-major copies of a seqlen-2048 forward took 7.5 ms
    of its 24 ms that way, against 0.85 ms in reused memory."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes > SCRATCH_MAX_BYTES:
        return np.empty(shape, dtype)
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    buf = buffers.get(slot)
    if buf is None or buf.nbytes < nbytes + 64:
        buf = buffers[slot] = np.empty(nbytes + 64, np.uint8)
    start = -buf.ctypes.data % 64  # rows of tiles start on a cache line, as np.empty's did
    return buf[start:start + nbytes].view(dtype).reshape(shape)


class _Problem:
    """One attention call in the kernels' terms: (T, H, d) token views (dense inputs are
    varlen with equal lengths), int64 cu_seqlens, the compute dtype, scales in log2 units."""

    def __init__(self, q, k, cu_seqlens_q, cu_seqlens_k, params: AttnParams, alibi_slopes,
                 philox):
        self.varlen = cu_seqlens_q is not None
        self.q_shape = q.shape
        if self.varlen:
            self.cu_q = cu_seqlens_q.to(torch.int64).numpy()
            self.cu_k = cu_seqlens_k.to(torch.int64).numpy()
        else:
            batch, seqlen_q, seqlen_k = q.shape[0], q.shape[1], k.shape[1]
            self.cu_q = np.arange(batch + 1, dtype=np.int64) * seqlen_q
            self.cu_k = np.arange(batch + 1, dtype=np.int64) * seqlen_k
        self.dtype = lse_dtype(q.dtype)  # computed in float64 or float32
        self.ftype = np.float64 if self.dtype == torch.float64 else np.float32
        self.heads_q, self.heads_kv = q.shape[-2], k.shape[-2]
        self.group = self.heads_q // self.heads_kv
        self.window = params.kernel_window
        self.qk_scale = self.ftype(params.qk_scale)  # see AttnParams.qk_scale
        self.cap = self.ftype(params.cap_log2)
        self.scale = params.softmax_scale
        # the kernels' ALiBi (slopes in log2 units, (batch or 1, Hq); form) and dropout
        if alibi_slopes is None:
            self.slopes, self.alibi = np.zeros((1, 1), self.ftype), 0
        else:
            slopes = alibi_slopes.detach().double().reshape(-1, self.heads_q) * LOG2E
            self.slopes = slopes.numpy().astype(self.ftype)
            self.alibi = 1 if params.alibi_causal else 2
        self.drop = (int(philox[0]), int(philox[1]), _dropout.threshold(params.dropout_p),
                     self.ftype(1.0 / (1.0 - params.dropout_p)))

    def tokens(self, x):
        """(T, H, d) tensor in the compute dtype with unit-stride rows: a view when possible."""
        x = x.detach().reshape(math.prod(x.shape[:-2]), *x.shape[-2:]).to(self.dtype)
        return x if x.stride(-1) == 1 else x.contiguous()

    def flat(self, x):
        """(1-D numpy view over x's memory, token stride, head stride) for a tokens() tensor."""
        total, heads, d = x.shape
        span = (0 if x.numel() == 0
                else 1 + (total - 1) * x.stride(0) + (heads - 1) * x.stride(1) + d - 1)
        flat = x.as_strided((span,), (1,), x.storage_offset())
        return flat.numpy(), x.stride(0), x.stride(1)

    def finite(self, *tokens) -> bool:
        """Whether every element of these tokens() tensors is finite: the kernels take exact
        (slower) paths otherwise, so that a NaN or Inf reaches exactly the outputs that
        depend on it. (torch.isfinite(x).all() takes 3x as long: a bool tensor, then a
        second pass.)"""
        return all((_all_finite_serial if _small(x) else _all_finite)(*self.flat(x), *x.shape)
                   for x in tokens)

    def head_major(self, x, slot, transposed=False):
        """(H, T + BLOCK_N, d), or (H, d, T + BLOCK_N) when transposed: a zero-padded copy of
        a tokens() tensor, in this thread's scratch buffer `slot` (see _scratch)."""
        total, heads, d = x.shape
        shape = (heads, d, total + BLOCK_N) if transposed else (heads, total + BLOCK_N, d)
        out = _scratch(slot, shape, self.ftype)
        (_head_major_serial if _small(x) else _head_major)(*self.flat(x), out, transposed)
        return out

    def lse_rows(self, lse):
        """The public LSE layout ((batch, Hq, seqlen) dense, (Hq, Tq) varlen) -> (Hq, Tq)."""
        if self.varlen:
            return lse
        return lse.transpose(0, 1).reshape(self.heads_q, lse.shape[0] * lse.shape[2])

    def lse_out(self, lse):
        """(Hq, Tq) -> the public LSE layout."""
        if self.varlen:
            return lse
        batch, seqlen = self.q_shape[0], self.q_shape[1]
        return lse.reshape(self.heads_q, batch, seqlen).transpose(0, 1)


@torch.no_grad()
def forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
            window_left, window_right, softcap, *, dropout_p=0.0, philox=(0, 0),
            alibi_slopes=None, out=None, lse=None):
    """Returns (out, lse); lse (batch, heads, seqlen_q) or (heads, total_q), float32 (float64
    for float64 inputs, as the reference). out and lse may be given (contiguous, those
    shapes): tests poison them to check every write."""
    P = _Problem(q, k, cu_seqlens_q, cu_seqlens_k,
                 AttnParams(softmax_scale, window_left, window_right, softcap,
                            dropout_p=dropout_p), alibi_slopes, philox)
    _set_threads()
    qt, kt_, vt_ = P.tokens(q), P.tokens(k), P.tokens(v)
    if out is not None and out.dtype == P.dtype:
        out_t = out.view(qt.shape)  # written in place
    else:
        out_t = torch.empty(qt.shape, dtype=P.dtype)
    lse_t = torch.empty((P.heads_q, qt.shape[0]), dtype=P.dtype)  # = lse_dtype(q.dtype)
    # no mask: taller query blocks load each K/V block for more rows
    block_m = 2 * BLOCK_M if P.window == (UNBOUNDED, UNBOUNDED) else BLOCK_M
    _forward(*P.flat(qt), P.head_major(kt_, 0, transposed=True), P.head_major(vt_, 1),
             out_t.numpy(), lse_t.numpy(), P.cu_q, P.cu_k, P.group, *P.window, P.qk_scale,
             P.cap, block_m, not P.finite(vt_), P.slopes, P.alibi, P.drop,
             numba.get_num_threads())
    out_t = out_t.view(q.shape)
    if out is not None:
        out_t = out if out_t.data_ptr() == out.data_ptr() else out.copy_(out_t)
    lse_t = P.lse_out(lse_t)
    lse_t = lse_t.contiguous() if lse is None else lse.copy_(lse_t)
    return out_t.to(q.dtype), lse_t


@torch.no_grad()
def backward(dout, dlse, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
             max_seqlen_k, softmax_scale, window_left, window_right, softcap, deterministic,
             *, dropout_p=0.0, philox=(0, 0), alibi_slopes=None, dq=None, dk=None, dv=None):
    """Returns (dq, dk, dv); dlse (the gradient of the returned LSE) may be None. Always
    deterministic: every output element is summed by one thread in a fixed order."""
    P = _Problem(q, k, cu_seqlens_q, cu_seqlens_k,
                 AttnParams(softmax_scale, window_left, window_right, softcap, deterministic,
                            dropout_p), alibi_slopes, philox)
    _set_threads()
    qt, kt_, vt_, ot, dot = (P.tokens(x) for x in (q, k, v, out, dout))
    delta = (dot * ot).sum(-1).transpose(0, 1)  # (Hq, Tq)
    dlse_t = torch.zeros_like(delta) if dlse is None else P.lse_rows(dlse).to(delta.dtype)
    delta = delta - dlse_t
    lse_t = P.lse_rows(lse)
    # -inf stays: a row that sees no key has only hidden pairs (p is set to 0 there), and
    # one whose visible scores are all -inf gets p = NaN, as the forward's NaN output
    lse2 = (lse_t.double() * LOG2E).to(P.dtype)
    pairs = (len(P.cu_q) - 1) * P.heads_kv
    blocks = max(1, math.ceil(kt_.shape[0] / BLOCK_N))
    chunks = max(1, min(blocks, math.ceil(numba.get_num_threads() / max(1, pairs))))
    total, heads, d = qt.shape
    dq_part = torch.from_numpy(_scratch(3, (chunks, heads, total, d), P.ftype)).zero_()
    dk_t = torch.empty(kt_.shape, dtype=P.dtype)
    dv_t = torch.empty(vt_.shape, dtype=P.dtype)
    _backward(P.head_major(qt, 4), P.head_major(kt_, 0), P.head_major(kt_, 1, transposed=True),
              P.head_major(vt_, 2, transposed=True), P.head_major(dot, 5),
              lse2.contiguous().numpy(), delta.to(P.dtype).contiguous().numpy(),
              dlse_t.to(P.dtype).contiguous().numpy(), dq_part.numpy(), dk_t.numpy(),
              dv_t.numpy(), P.cu_q, P.cu_k, P.group, *P.window, P.qk_scale, P.cap,
              not P.finite(qt, kt_, vt_, dot), P.slopes, P.alibi, P.drop,
              numba.get_num_threads())
    dq_t = torch.empty(qt.shape, dtype=P.dtype)
    torch.mul((dq_part[0] if chunks == 1 else dq_part.sum(0)).transpose(0, 1), P.scale,
              out=dq_t)
    dk_t.mul_(P.scale)
    results = []
    for grad, given, like in ((dq_t, dq, q), (dk_t, dk, k), (dv_t, dv, v)):
        grad = grad.view(like.shape).to(like.dtype)
        results.append(grad if given is None else given.copy_(grad))
    return tuple(results)
