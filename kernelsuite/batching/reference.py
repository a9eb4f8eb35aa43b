"""References for the batching kernels: packing in plain Python, pad/unpad in PyTorch.

The packing references give the same bins as the Numba kernels but are written another
way, with lists, dicts and bisect, so each checks the other:
- ffd fills one bin at a time: the first item of a bin is the longest left, then, again and
  again, the longest left that still fits (earliest among equals). Putting each sequence
  in the first bin with room, in decreasing order, gives the same bins.
- bfd keeps a sorted list of the distinct rooms left in open bins and a stack of bins per
  room; bisect finds the tightest room that fits.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort

import numpy as np

from .common import (Packing, check_algorithm, check_capacity, check_indices, check_lengths,
                     unpad_layout)


def _greedy(lengths, capacity):
    bin_ids, bins, room = [], 0, -1
    for x in lengths:
        if x > room:
            bins, room = bins + 1, capacity
        room -= x
        bin_ids.append(bins - 1)
    return bin_ids, bins


def _ffd(lengths, capacity):
    by_length = {}  # length -> indices left, in input order
    for i, x in enumerate(lengths):
        by_length.setdefault(x, []).append(i)
    for items in by_length.values():
        items.reverse()  # pop() takes the earliest
    sizes = sorted(by_length)  # the distinct lengths left
    bin_ids = [0] * len(lengths)
    bins = 0
    while sizes:
        room = capacity
        while True:
            k = bisect_right(sizes, room) - 1  # the longest length left that fits
            if k < 0:
                break
            x = sizes[k]
            bin_ids[by_length[x].pop()] = bins
            room -= x
            if not by_length[x]:
                del sizes[k]
        bins += 1
    return bin_ids, bins


def _bfd(lengths, capacity):
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable
    rooms = []  # the distinct rooms left in open bins, sorted
    stacks = {}  # room -> bins with exactly that room, the last to reach it on top
    bin_ids = [0] * len(lengths)
    bins = 0
    for i in order:
        x = lengths[i]
        k = bisect_left(rooms, x)
        if k < len(rooms):
            room = rooms[k]
            b = stacks[room].pop()
            if not stacks[room]:
                del rooms[k]
        else:
            b, room, bins = bins, capacity, bins + 1
        bin_ids[i] = b
        room -= x
        if not stacks.get(room):
            stacks[room] = []
            insort(rooms, room)
        stacks[room].append(b)
    return bin_ids, bins


def pack_sequences(lengths, capacity, algorithm="ffd", truncate=False) -> Packing:
    """Plain-Python reference of kernelsuite.batching.pack_sequences (same arguments, same
    bins)."""
    capacity = check_capacity(capacity)
    algorithm = check_algorithm(algorithm)
    arr = check_lengths(lengths, capacity, truncate)
    fn = {"greedy": _greedy, "ffd": _ffd, "bfd": _bfd}[algorithm]
    bin_ids, bins = fn(arr.tolist(), capacity)
    return Packing(np.array(bin_ids, dtype=np.int64), bins, capacity, arr)


def unpad_input(hidden_states, attention_mask, unused_mask=None):
    """Reference of kernelsuite.batching.unpad_input: a gather of the kept rows."""
    indices, cu_seqlens, max_seqlen, seqused = unpad_layout(hidden_states, attention_mask,
                                                            unused_mask)
    rows = hidden_states.flatten(0, 1)
    return rows[indices], indices, cu_seqlens, max_seqlen, seqused


def pad_input(hidden_states, indices, batch, seqlen):
    """Reference of kernelsuite.batching.pad_input: zeros, then a scatter of the rows."""
    check_indices(hidden_states, indices, batch, seqlen)
    out = hidden_states.new_zeros(batch * seqlen, *hidden_states.shape[1:])
    out = out.index_put((indices,), hidden_states)
    return out.reshape(batch, seqlen, *hidden_states.shape[1:])
