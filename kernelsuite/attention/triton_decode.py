"""Split-KV decode attention in Triton (FlashDecoding): a few query rows against a KV cache
read in place, contiguous or paged.

One program per (slice of the cache, sequence, kv head): it loads the query rows of its
kv head's GQA group (group x seqlen_q rows, padded to a tile of at least 16 for tl.dot),
walks its slice of the sequence's visible cache rows [cache_leftpad, cache_seqlens +
seqlen_new) in blocks of BLOCK_N keys, each key row found through the page table (a
contiguous cache is one page per sequence), and keeps an online softmax in log2 units;
each cache byte is read once per kv head. The slices' partial outputs merge by their
log-sum-exp (_decode.merge). The score pipeline (softcap, ALiBi, windows) is
triton_flash's. Not yet compiled and checked for Hopper's registers as the prefill
kernels are (harness/hopper.py); it runs under the interpreter in the tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._decode import BLOCK, merge, partials
from ._params import AttnParams
from .triton_flash import _LOG2E, _alibi, _scores


@triton.jit(do_not_specialize=["page", "win_left", "win_right"])
def _decode_kernel(Q, K, V, PAGES, ENDS, STARTS, ALIBI_SLOPES, O_PART, LSE_PART,
                   stride_qb, stride_qs, stride_qh, stride_k0, stride_k1, stride_kh,
                   stride_v0, stride_v1, stride_vh, stride_pb, stride_ab,
                   stride_os, stride_ob, stride_oh, stride_or, stride_ls, stride_lb,
                   stride_lh, page, seqlen_q, heads_kv, group, splits, win_left, win_right,
                   qk_scale, cap_log2, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SOFTCAP: tl.constexpr,
                   ALIBI: tl.constexpr, DOT_PREC: tl.constexpr):
    split = tl.program_id(0)
    pid = tl.program_id(1)
    b = pid // heads_kv
    hk = pid % heads_kv
    end = tl.load(ENDS + b)
    start = tl.load(STARTS + b)
    chunk = ((end - start + splits - 1) // splits + BLOCK_N - 1) // BLOCK_N * BLOCK_N
    lo = start + split * chunk
    hi = tl.minimum(end, lo + chunk)

    m = tl.arange(0, BLOCK_M)  # query row m: head hk * group + m // seqlen_q, row m % seqlen_q
    row_ok = m < group * seqlen_q
    h = hk * group + m // seqlen_q
    r = m % seqlen_q
    pos = r + end - seqlen_q  # the cache row query r sits at (bottom-right alignment)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b.to(tl.int64) * stride_qb + r[:, None] * stride_qs + h[:, None] * stride_qh
                + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if ALIBI != 0:
        slope2 = tl.load(ALIBI_SLOPES + b * stride_ab + h, mask=row_ok, other=0.0) * _LOG2E
    else:
        slope2 = tl.zeros([BLOCK_M], tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    for j0 in range(lo, hi, BLOCK_N):
        j = j0 + offs_n
        ok = j < hi
        blk = tl.load(PAGES + b * stride_pb + j // page, mask=ok, other=0).to(tl.int64)
        slot = (j % page).to(tl.int64)
        kv_mask = ok[:, None] & d_ok[None, :]
        k = tl.load(K + blk[:, None] * stride_k0 + slot[:, None] * stride_k1 + hk * stride_kh
                    + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + blk[:, None] * stride_v0 + slot[:, None] * stride_v1 + hk * stride_vh
                    + offs_d[None, :], mask=kv_mask, other=0.0)
        s, _t = _scores(tl.dot(q, tl.trans(k), input_precision=DOT_PREC), qk_scale, cap_log2, SOFTCAP)
        if ALIBI == 1:  # flash-attn's causal form counts keys from the first visible row
            s = s + slope2[:, None] * (j - start)[None, :].to(tl.float32)
        else:
            s = _alibi(s, pos[:, None], j[None, :], 0, slope2[:, None], ALIBI)
        seen = (row_ok[:, None] & ok[None, :] & (j[None, :] >= pos[:, None] - win_left)
                & (j[None, :] <= pos[:, None] + win_right))
        s = tl.where(seen, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))
    base_o = O_PART + split * stride_os + b.to(tl.int64) * stride_ob
    tl.store(base_o + h[:, None] * stride_oh + r[:, None] * stride_or + offs_d[None, :], out,
             mask=row_ok[:, None] & d_ok[None, :])
    tl.store(LSE_PART + split * stride_ls + b * stride_lb + h * stride_lh + r, lse, mask=row_ok)


def _workers(device) -> int:
    """Programs that run at once, for the split count: the GPU's SMs (1 interpreted)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _tile(dtype, block_d) -> tuple[int, int]:
    """(keys per step, warps) per program, so that no tile spills on sm_90
    (tests/test_triton_static.py): the float32 product (FMA, no tensor cores) holds its K
    and V tiles in registers: 64 keys with 4 warps spilled 700 bytes per thread at head_dim
    128 (8 warps: 176 registers, none), and 628 bytes with 8 warps at head_dim 256 (172
    with 16), so there it takes 32 keys. 16-bit tiles fit 4 warps up to head_dim 128."""
    if dtype == torch.float32:
        return (BLOCK, 8) if block_d <= 128 else (BLOCK // 2, 8)
    return (BLOCK, 4) if block_d <= 128 else (BLOCK, 8)


@torch.no_grad()
def decode(q, k_cache, v_cache, pages, page, ends, starts, params: AttnParams, alibi_slopes,
           num_splits):
    """As numba_decode.decode, on CUDA (or CPU tensors interpreted)."""
    batch, sq, heads, d = q.shape
    heads_kv = k_cache.shape[2]
    group = heads // heads_kv
    splits, o_part, lse_part = partials(q, heads_kv, ends, starts, num_splits,
                                        _workers(q.device), torch.float32)
    slopes = alibi_slopes.float().contiguous() if alibi_slopes is not None else None
    stride_ab = 0 if slopes is None or slopes.dim() == 1 else slopes.stride(0)
    q = q if q.stride(-1) == 1 else q.contiguous()
    pages = pages.contiguous()
    block_d = max(16, triton.next_power_of_2(d))
    block_n, warps = _tile(q.dtype, block_d)
    _decode_kernel[(splits, batch * heads_kv)](
        q, k_cache, v_cache, pages, ends.contiguous(), starts.contiguous(), slopes, o_part,
        lse_part, q.stride(0), q.stride(1), q.stride(2), *k_cache.stride()[:3],
        *v_cache.stride()[:3], pages.stride(0), stride_ab, *o_part.stride()[:4],
        *lse_part.stride()[:3], page, sq, heads_kv, group, splits, *params.kernel_window,
        params.qk_scale, params.cap_log2, HEAD_DIM=d, BLOCK_D=block_d,
        BLOCK_M=max(16, triton.next_power_of_2(group * sq)), BLOCK_N=block_n,
        SOFTCAP=params.softcap > 0,
        ALIBI=0 if slopes is None else 1 if params.alibi_causal else 2,
        DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=warps)
    return merge(o_part, lse_part, q.dtype)
