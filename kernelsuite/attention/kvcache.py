"""Attention over a KV cache: flash-attn 2.8's ``flash_attn_with_kvcache``, and a small
paged-cache allocator for tests and examples.

What the call does, as flash-attn's (flash_attn_interface.py and csrc/flash_attn, v2.8.3):

1. with new ``k``/``v`` (batch, seqlen_new, heads_kv, d): rotary (when ``rotary_cos``/
   ``rotary_sin`` are given) rotates k at its absolute positions cache_seqlens + i, and
   k, v are written **in place** into the cache at rows cache_seqlens[b] + i of sequence b
   (cache row cache_batch_idx[b], or the pages block_table[b] names);
2. rotary rotates q at positions cache_seqlens + i when the call is causal or local, and
   every row at cache_seqlens otherwise;
3. query row r of sequence b attends to the cache rows [cache_leftpad[b], cache_seqlens[b]
   + seqlen_new), the causal / window mask aligned bottom-right on that range (ALiBi and
   softcap as in prefill).

Steps 1-2 are plain torch, shared by every backend. Step 3 on Triton, and on Numba with a
float32/float64 cache and a head_dim that is a multiple of 8: a split-KV decode kernel
(triton_decode.py, numba_decode.py; FlashDecoding) reads the cache in place through a page
table, in ``num_splits`` slices per sequence (0: enough for the GPU's SMs or the threads)
merged by log-sum-exp. Otherwise
(the reference, other caches on the CPU) each sequence's visible rows are gathered into
tokens (a copy) for the variable-length kernels (:func:`flash_attn_varlen_func`), where
``num_splits`` has no effect.
"""

from __future__ import annotations

import numbers

import torch

from .._checks import as_index
from ._paged import Layout, int32_vector, segments
from ._params import AttnParams, bounded_window, check_flag, check_head_vector
from .api import _check_tensors, _resolve_backend, flash_attn_varlen_func

MAX_SPLITS = 128
# caches the Numba split-KV kernel reads in place (others: the gather path); its P @ V
# microkernel reads value rows in vectors of 8
NUMBA_DECODE_DTYPES = (torch.float32, torch.float64)
NUMBA_DECODE_HEAD_DIM_MULTIPLE = 8


def apply_rotary(x, cos, sin, positions, interleaved):
    """Rotary embedding of x (batch, seqlen, heads, d) at integer positions (batch, seqlen):
    the first 2 * cos.shape[1] channels rotate, the rest pass through; interleaved pairs
    (x[2t], x[2t+1]) (GPT-J) or halves (x[:r/2], x[r/2:r]) (GPT-NeoX). Computed in float32
    (float64 for float64 x) and rounded back, as flash-attn's kernel does."""
    half = cos.shape[1]
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    c = cos[positions].to(work)[:, :, None, :]  # (batch, seqlen, 1, half)
    s = sin[positions].to(work)[:, :, None, :]
    rot, rest = x[..., :2 * half].to(work), x[..., 2 * half:]
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)
    else:
        x1, x2 = rot[..., :half], rot[..., half:]
        out = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
    return torch.cat([out.to(x.dtype), rest], dim=-1)


def flash_attn_with_kvcache(q, k_cache, v_cache, k=None, v=None, rotary_cos=None,
                            rotary_sin=None, cache_seqlens=None, cache_batch_idx=None,
                            cache_leftpad=None, block_table=None, softmax_scale=None,
                            causal=False, window_size=(-1, -1), softcap=0.0,
                            rotary_interleaved=True, alibi_slopes=None, num_splits=0,
                            return_softmax_lse=False, *, backend=None):
    """flash-attn 2.8's flash_attn_with_kvcache (see the module docstring).

    q (batch, seqlen_q, heads, d); k_cache, v_cache (batch_cache, seqlen_cache, heads_kv, d),
    or paged (num_blocks, page_size, heads_kv, d) with block_table int32 (batch,
    max_blocks) (any page size); k, v (batch, seqlen_new, heads_kv, d), written into the
    cache in place; cache_seqlens int or int32 (batch,) (None: the whole cache, without
    k/v); cache_batch_idx int32 (batch,) (not with block_table); cache_leftpad int32
    (batch,): rows before it are not keys; rotary_cos/sin (seqlen_ro, rotary_dim / 2) in
    q's dtype, with k/v only. Returns out (batch, seqlen_q, heads, d), and the float32 LSE
    (batch, heads, seqlen_q) with return_softmax_lse (-inf for a row that sees no key,
    where flash-attn writes +inf). backend as :func:`flash_attn_func` ("torch": the
    reference).
    """
    backend = _resolve_backend("auto" if backend is None else backend, q)
    _check_tensors(q, q, q, backend, varlen=False)  # q alone: layout, dtype, head_dim
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor (batch_cache, seqlen_cache, "
                             "heads_kv, d) or (num_blocks, page_size, heads_kv, d)")
        if t.dtype != q.dtype or t.device != q.device:
            raise TypeError(f"{name} must be {q.dtype} on {q.device} like q, got {t.dtype} "
                            f"on {t.device}")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache and v_cache must have the same shape, got "
                         f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if k_cache.shape[-1] != q.shape[-1]:
        raise ValueError(f"k_cache.shape[-1] ({k_cache.shape[-1]}) must equal q's head_dim "
                         f"({q.shape[-1]})")
    if k_cache.shape[2] == 0 or q.shape[2] % k_cache.shape[2]:
        raise ValueError(f"q's heads ({q.shape[2]}) must be a multiple of the cache's heads "
                         f"({k_cache.shape[2]})")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache must have stride 1 in their last dim (they "
                         "are written in place)")
    batch, seqlen_q, heads, d = q.shape
    device = q.device
    layout = Layout(k_cache, batch, block_table, cache_batch_idx, device)
    if (k is None) != (v is None):
        raise ValueError("k and v must be given together (the new tokens' keys and values)")
    seqlen_new = 0
    if k is not None:
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.shape[0] != batch \
                    or t.shape[2:] != k_cache.shape[2:]:
                raise ValueError(f"{name} must be (batch={batch}, seqlen_new, "
                                 f"{k_cache.shape[2]}, {d}), got "
                                 f"{tuple(t.shape) if isinstance(t, torch.Tensor) else t}")
            if t.dtype != k_cache.dtype or t.device != device:
                raise TypeError(f"{name} must be {k_cache.dtype} on {device} like the cache")
        if k.shape != v.shape:
            raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and "
                             f"{tuple(v.shape)}")
        seqlen_new = k.shape[1]
    if cache_seqlens is None:
        if k is not None:
            raise ValueError("cache_seqlens is needed with new k/v (where to write them)")
        seqlens = torch.full((batch,), layout.capacity, device=device)
    elif as_index(cache_seqlens) is not None and not isinstance(cache_seqlens, torch.Tensor):
        seqlens = torch.full((batch,), as_index(cache_seqlens), device=device)
    else:
        seqlens = int32_vector("cache_seqlens", cache_seqlens, batch, device)
    leftpad = (torch.zeros(batch, dtype=torch.long, device=device) if cache_leftpad is None
               else int32_vector("cache_leftpad", cache_leftpad, batch, device))
    if batch:
        if int(seqlens.min()) < 0 or int(seqlens.max()) + seqlen_new > layout.capacity:
            raise ValueError(f"cache_seqlens + seqlen_new must be in [0, {layout.capacity}] "
                             f"(the cache's rows per sequence), got up to "
                             f"{int(seqlens.max()) + seqlen_new}")
        if int(leftpad.min()) < 0 or bool((leftpad > seqlens).any()):
            raise ValueError("cache_leftpad must be in [0, cache_seqlens] per sequence")
    if (not isinstance(num_splits, numbers.Integral) or isinstance(num_splits, bool)
            or not 0 <= num_splits <= MAX_SPLITS):
        raise ValueError(f"num_splits must be an int in [0, {MAX_SPLITS}] (0: automatic), "
                         f"got {num_splits!r}")
    causal = check_flag("causal", causal)
    rotary_interleaved = check_flag("rotary_interleaved", rotary_interleaved)
    return_softmax_lse = check_flag("return_softmax_lse", return_softmax_lse)

    if (rotary_cos is None) != (rotary_sin is None):
        raise ValueError("rotary_cos and rotary_sin must be given together")
    if rotary_cos is not None:
        if k is None:
            raise ValueError("rotary_cos/rotary_sin need new k/v (flash-attn rotates q and "
                             "the new keys only)")
        if (not isinstance(rotary_cos, torch.Tensor) or rotary_cos.dim() != 2
                or rotary_cos.shape != rotary_sin.shape or 2 * rotary_cos.shape[1] > d
                or rotary_cos.device != device):
            raise ValueError(f"rotary_cos and rotary_sin must be (seqlen_ro, rotary_dim / 2) "
                             f"tensors on {device} with rotary_dim <= head_dim ({d})")
        # q is rotated at positions up to cache_seqlens + seqlen_q - 1 (causal or local)
        needed = (int(seqlens.max()) + max(seqlen_new, seqlen_q)) if batch else 0
        if rotary_cos.shape[0] < needed:
            raise ValueError(f"rotary_cos has {rotary_cos.shape[0]} positions, the call uses "
                             f"up to {needed}")
        positions = seqlens[:, None] + torch.arange(seqlen_new, device=device)
        k = apply_rotary(k, rotary_cos, rotary_sin, positions, rotary_interleaved)
        # flash-attn: causal is the window (left, 0); sides >= the capacity are unbounded
        left, right = bounded_window(window_size, layout.capacity, layout.capacity)
        right = 0 if causal else right
        local = left >= 0 or right >= 0
        rows = torch.arange(seqlen_q, device=device) if local else torch.zeros(
            seqlen_q, dtype=torch.long, device=device)
        q = apply_rotary(q, rotary_cos, rotary_sin, seqlens[:, None] + rows,
                         rotary_interleaved)
    if k is not None and seqlen_new:  # the append, in place
        batch_of, j = segments(seqlens, seqlens + seqlen_new)
        where = layout.index(batch_of, j)
        k_cache[where] = k.reshape(-1, *k.shape[2:])
        v_cache[where] = v.reshape(-1, *v.shape[2:])
    ends = seqlens + seqlen_new
    if batch and seqlen_q and (backend == "triton" or backend == "numba"
                               and k_cache.dtype in NUMBA_DECODE_DTYPES
                               and d % NUMBA_DECODE_HEAD_DIM_MULTIPLE == 0):
        # the split-KV kernels read the cache in place, through a page table
        if backend == "numba":
            from . import numba_decode as kernels
        else:
            from . import triton_decode as kernels

        params = AttnParams.make(softmax_scale, causal, window_size, softcap, False, d)
        params = params.bounded(seqlen_q, int((ends - leftpad).max()))
        if alibi_slopes is not None:
            check_head_vector("alibi_slopes", alibi_slopes, batch, heads, device, True)
        if layout.pages is None:
            pages, page = layout.rows[:, None], layout.capacity
        else:
            pages, page = layout.pages, layout.page
        out, lse = kernels.decode(q, k_cache, v_cache, pages, page, ends, leftpad, params,
                                  alibi_slopes, num_splits)
        return (out, lse) if return_softmax_lse else out
    keys, values = layout.gather(k_cache, v_cache, leftpad, ends)  # (total_k, heads_kv, d)
    lengths = (ends - leftpad).to(torch.int32)
    cu_k = torch.zeros(batch + 1, dtype=torch.int32, device=device)
    cu_k[1:] = torch.cumsum(lengths, 0)
    cu_q = torch.arange(0, batch * seqlen_q + 1, seqlen_q if seqlen_q else 1,
                        dtype=torch.int32, device=device)[:batch + 1]
    max_k = int(lengths.max()) if batch else 0
    out, lse = flash_attn_varlen_func(
        q.reshape(batch * seqlen_q, heads, d), keys, values, cu_q, cu_k, seqlen_q, max_k,
        softmax_scale=softmax_scale, causal=causal, window_size=window_size, softcap=softcap,
        alibi_slopes=alibi_slopes, return_lse=True, backend=backend)
    out = out.view(batch, seqlen_q, heads, d)
    if return_softmax_lse:
        return out, lse.view(heads, batch, seqlen_q).transpose(0, 1)
    return out


class PagedKVCache:
    """A paged KV cache for tests and examples (not a serving engine): k_cache and v_cache
    (num_blocks, page_size, heads_kv, head_dim), a free list of blocks, and per sequence
    its blocks and length.

        cache = PagedKVCache(num_blocks=64, page_size=16, heads_kv=2, head_dim=64)
        seqs = [cache.new_sequence() for _ in range(batch)]
        seqlens, table = cache.step(seqs, n)   # room for n more tokens each
        out = flash_attn_with_kvcache(q, cache.k_cache, cache.v_cache, k, v,
                                      cache_seqlens=seqlens, block_table=table)
        cache.free(seqs[0])                    # its blocks return to the pool

    Blocks are handed out lowest index first from a free list, so after frees and new
    sequences a sequence's pages are scattered, as in a serving engine.
    """

    def __init__(self, num_blocks, page_size, heads_kv, head_dim, dtype=torch.float32,
                 device="cpu"):
        for name, value in (("num_blocks", num_blocks), ("page_size", page_size),
                            ("heads_kv", heads_kv), ("head_dim", head_dim)):
            if as_index(value) is None or as_index(value) < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        shape = (num_blocks, page_size, heads_kv, head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.page_size = page_size
        self._free = list(range(num_blocks))
        self._blocks: dict[int, list[int]] = {}
        self._lengths: dict[int, int] = {}
        self._next_id = 0

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def new_sequence(self) -> int:
        """A new, empty sequence's id."""
        seq, self._next_id = self._next_id, self._next_id + 1
        self._blocks[seq], self._lengths[seq] = [], 0
        return seq

    def length(self, seq: int) -> int:
        return self._lengths[self._known(seq)]

    def _known(self, seq):
        if seq not in self._lengths:
            raise KeyError(f"unknown sequence {seq!r} (freed, or never made)")
        return seq

    def reserve(self, seq: int, n: int) -> None:
        """Blocks for n more tokens of seq; MemoryError (nothing taken) if the pool has too
        few."""
        if as_index(n) is None or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        blocks = self._blocks[self._known(seq)]
        need = -(-(self._lengths[seq] + n) // self.page_size) - len(blocks)
        if need > len(self._free):
            raise MemoryError(f"sequence {seq} needs {need} more blocks, {len(self._free)} "
                              "are free")
        blocks += [self._free.pop(0) for _ in range(need)]

    def step(self, seqs, n: int):
        """(cache_seqlens int32, block_table int32) for a call that appends n tokens to each
        of seqs, after reserving their room; the lengths advance by n (the call writes the
        tokens). Unused block-table entries are 0 (never read)."""
        for seq in seqs:
            self.reserve(seq, n)
        device = self.k_cache.device
        seqlens = torch.tensor([self._lengths[s] for s in seqs], dtype=torch.int32,
                               device=device)
        width = max((len(self._blocks[s]) for s in seqs), default=0)
        table = torch.zeros(len(seqs), max(width, 1), dtype=torch.int32)
        for row, seq in enumerate(seqs):
            blocks = self._blocks[seq]
            table[row, :len(blocks)] = torch.tensor(blocks, dtype=torch.int32)
            self._lengths[seq] += n
        return seqlens, table.to(device)

    def free(self, seq: int) -> None:
        """Returns seq's blocks to the pool; the id is gone."""
        self._free = sorted(self._free + self._blocks.pop(self._known(seq)))
        del self._lengths[seq]
