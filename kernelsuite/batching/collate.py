"""Packed rows from a Packing: token ids, labels, position ids and cu_seqlens for
flash_attn_varlen_func."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .._checks import is_int
from .common import Packing, as_lengths, check_capacity

IGNORE_INDEX = -100  # torch.nn.functional.cross_entropy's default ignore_index


class PackedBatch(NamedTuple):
    """num_bins rows of `capacity` tokens.

    input_ids, labels, position_ids: int64 (num_bins, capacity). labels[r, t] is the token
    after input_ids[r, t] in the same document (shifted already: use it as the target of
    position t), IGNORE_INDEX at each document's last token and at padding. position_ids
    restart at 0 for each document. cu_seqlens (int32) and max_seqlen describe the
    flattened (num_bins * capacity) tokens as segments: the documents, and each row's
    padding tail as a segment of its own, so `flash_attn_varlen_func(q, k, v, cu_seqlens,
    cu_seqlens, max_seqlen, max_seqlen, causal=True)` on q of shape (num_bins * capacity,
    heads, head_dim) never lets a token see another document.
    """
    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int


def _token_array(tokens, i):
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    try:
        return as_lengths(tokens, f"token_lists[{i}]")
    except (TypeError, ValueError) as e:
        raise type(e)(f"{e} (token_lists holds one 1-D sequence of token ids per "
                      "document)") from None


def _check_id(value, name):
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not -2**63 <= value < 2**63:
        raise ValueError(f"{name} must fit int64, got {value!r}")


def _check_packing(packing):
    """A Packing whose fields agree (one built by hand may not)."""
    if not isinstance(packing, Packing):
        raise TypeError(f"packing must be a Packing (from pack_sequences), got "
                        f"{type(packing).__name__}")
    ids, lengths = np.asarray(packing.bin_ids), np.asarray(packing.lengths)
    n = packing.num_bins
    if ids.ndim != 1 or ids.dtype.kind not in "iu" or lengths.shape != ids.shape \
            or lengths.dtype.kind not in "iu" or not isinstance(n, (int, np.integer)) \
            or (ids.size and (ids.min() < 0 or ids.max() >= n or lengths.min() < 0)):
        raise ValueError("packing is inconsistent: bin_ids and lengths must be 1-D integer "
                         "arrays of one size, bin_ids in [0, num_bins), lengths >= 0")


def collate_packed(token_lists, packing, capacity, pad_id,
                   ignore_index=IGNORE_INDEX) -> PackedBatch:
    """Rows of packed documents: document i goes to row packing.bin_ids[i]; the documents of
    a row keep their order in token_lists. A document packed with truncate=True is cut to
    its packed length. Rows are filled up to capacity with pad_id.
    """
    _check_packing(packing)
    capacity = check_capacity(capacity)
    _check_id(pad_id, "pad_id")
    _check_id(ignore_index, "ignore_index")
    try:
        token_lists = list(token_lists)
    except TypeError:
        raise TypeError(f"token_lists must be a sequence of token sequences, got "
                        f"{type(token_lists).__name__}") from None
    n = len(packing.bin_ids)
    if len(token_lists) != n:
        raise ValueError(f"token_lists has {len(token_lists)} documents but the packing has "
                         f"{n}")
    lengths = packing.lengths
    loads = packing.loads
    if loads.size and loads.max() > capacity:
        raise ValueError(f"capacity={capacity} is less than the fullest bin "
                         f"({loads.max()} tokens; the packing's capacity is "
                         f"{packing.capacity})")
    if packing.num_bins * capacity >= 2**31:
        raise ValueError(f"num_bins * capacity = {packing.num_bins * capacity} tokens do not "
                         "fit int32 cu_seqlens: collate fewer documents at a time")
    pieces = []
    for i, tokens in enumerate(token_lists):
        arr = _token_array(tokens, i)
        if arr.size != lengths[i] and not (arr.size > lengths[i] == packing.capacity):
            raise ValueError(f"token_lists[{i}] has {arr.size} tokens but the packing "
                             f"packed {lengths[i]}")
        pieces.append(arr[:lengths[i]])
    rows = packing.num_bins
    input_ids = np.full((rows, capacity), pad_id, np.int64)
    labels = np.full((rows, capacity), ignore_index, np.int64)
    position_ids = np.empty((rows, capacity), np.int64)
    # documents in row order; `offset` is each one's first position in the concatenation
    # of all documents, doc_start its first position in the flattened rows
    order = np.argsort(packing.bin_ids, kind="stable")
    doc_len, doc_row = lengths[order], packing.bin_ids[order]
    offset = np.cumsum(doc_len) - doc_len
    row_offset = np.cumsum(loads) - loads
    doc_start = doc_row * capacity + offset - row_offset[doc_row]
    flat = np.concatenate([pieces[i] for i in order]) if n else np.zeros(0, np.int64)
    dest = np.repeat(doc_start - offset, doc_len) + np.arange(flat.size)
    input_ids.reshape(-1)[dest] = flat
    shifted = np.append(flat[1:], ignore_index)
    ends = np.cumsum(doc_len)[doc_len > 0] - 1
    shifted[ends] = ignore_index  # a label never crosses into the next document
    labels.reshape(-1)[dest] = shifted
    # segments: documents, then each row's padding tail
    row_starts = np.arange(rows) * capacity
    bounds = np.unique(np.concatenate([doc_start[doc_len > 0], row_starts,
                                       row_starts + loads, [rows * capacity]]))
    cu_seqlens = bounds.astype(np.int32)
    seg_len = np.diff(bounds)
    seg_start = np.repeat(bounds[:-1], seg_len)
    position_ids.reshape(-1)[:] = np.arange(rows * capacity) - seg_start
    return PackedBatch(torch.from_numpy(input_ids), torch.from_numpy(labels),
                       torch.from_numpy(position_ids), torch.from_numpy(cu_seqlens),
                       int(seg_len.max()) if seg_len.size else 0)
