"""Where a sequence's cache rows live (contiguous, picked by cache_batch_idx, or paged
through a block table) and the gather of row ranges: shared by flash_attn_with_kvcache,
the paged flash_attn_varlen_func and the reference, without importing any kernel."""

from __future__ import annotations

import torch


def int32_vector(name, x, batch, device):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be an int32 tensor (batch,), got {type(x).__name__}")
    if x.dtype != torch.int32 or tuple(x.shape) != (batch,):
        raise ValueError(f"{name} must be int32 of shape ({batch},), got {x.dtype} "
                         f"{tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but q is on {device}")
    return x.long()


class Layout:
    """Where sequence b's logical cache row j lives: (pages[b, j // P], j % P) for a paged
    cache, (rows[b], j) otherwise; capacity: the rows a sequence can hold."""

    def __init__(self, k_cache, batch, block_table, cache_batch_idx, device):
        if block_table is not None:
            if cache_batch_idx is not None:
                raise ValueError("cache_batch_idx cannot be combined with block_table (the "
                                 "block table names each sequence's pages)")
            if not isinstance(block_table, torch.Tensor) or block_table.dtype != torch.int32:
                raise TypeError("block_table must be an int32 tensor (batch, max_blocks)")
            if block_table.dim() != 2 or block_table.shape[0] != batch:
                raise ValueError(f"block_table must be (batch={batch}, max_blocks), got "
                                 f"{tuple(block_table.shape)}")
            if block_table.device != device:
                raise ValueError(f"block_table is on {block_table.device} but q is on {device}")
            num_blocks, self.page = k_cache.shape[0], k_cache.shape[1]
            if block_table.numel() and not (0 <= int(block_table.min())
                                            and int(block_table.max()) < num_blocks):
                raise ValueError(f"block_table entries must be in [0, {num_blocks}) (the "
                                 f"cache's blocks), got [{int(block_table.min())}, "
                                 f"{int(block_table.max())}]")
            self.pages = block_table.long()
            self.capacity = block_table.shape[1] * self.page
        else:
            self.pages = None
            if cache_batch_idx is None:
                if k_cache.shape[0] != batch:
                    raise ValueError(f"k_cache has {k_cache.shape[0]} sequences but q has "
                                     f"batch {batch}: pass cache_batch_idx to pick rows")
                self.rows = torch.arange(batch, device=device)
            else:
                self.rows = int32_vector("cache_batch_idx", cache_batch_idx, batch, device)
                if batch and not (0 <= int(self.rows.min())
                                  and int(self.rows.max()) < k_cache.shape[0]):
                    raise ValueError(f"cache_batch_idx entries must be in [0, "
                                     f"{k_cache.shape[0]}) (the cache's sequences)")
            self.capacity = k_cache.shape[1]

    def index(self, batch_of, j):
        """(dim-0 index, dim-1 index) into the cache of logical rows j of sequences
        batch_of (1-D tensors of one length)."""
        if self.pages is None:
            return self.rows[batch_of], j
        return self.pages[batch_of, j // self.page], j % self.page

    def gather(self, k_cache, v_cache, starts, ends):
        """Every sequence b's rows [starts[b], ends[b]) of k_cache and v_cache, as (total,
        heads_kv, d) tokens (copies)."""
        where = self.index(*segments(starts, ends))
        return k_cache[where], v_cache[where]


def segments(starts, ends):
    """(sequence of each row, logical row) of the row ranges [starts[b], ends[b])."""
    lengths = ends - starts
    batch_of = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device),
                                       lengths)
    first = torch.cumsum(lengths, 0) - lengths
    j = torch.arange(int(lengths.sum()), device=lengths.device) - first[batch_of] + \
        starts[batch_of]
    return batch_of, j


def check_paged(k, v, block_table, cu_seqlens_k, device):
    """flash_attn_varlen_func's paged k, v (num_blocks, page_size, heads_kv, d) with
    block_table (batch, max_blocks), where sequence b's keys are its logical rows
    [0, cu_seqlens_k[b+1] - cu_seqlens_k[b]): checks the table against the cache and the
    lengths. Returns (Layout, lengths)."""
    for name, t in (("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be (num_blocks, page_size, heads_kv, head_dim) with "
                             "a block_table")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    batch = cu_seqlens_k.numel() - 1
    layout = Layout(k, batch, block_table, None, device)
    lengths = (cu_seqlens_k[1:] - cu_seqlens_k[:-1]).long()
    if batch and int(lengths.max()) > layout.capacity:
        raise ValueError(f"a sequence of {int(lengths.max())} keys does not fit the block "
                         f"table's {layout.capacity} rows ({block_table.shape[1]} blocks of "
                         f"{layout.page})")
    return layout, lengths


def gather_paged(k, v, block_table, cu_seqlens_k, device):
    """The paged k, v of check_paged as (total_k, heads_kv, d) tokens (a copy)."""
    layout, lengths = check_paged(k, v, block_table, cu_seqlens_k, device)
    return layout.gather(k, v, torch.zeros_like(lengths), lengths)
