"""The packing algorithms by their definitions, one sequence at a time over every bin:
slow (O(n * bins)) and obviously right, the oracle for the kernels and the references; the
checks of a packing and of collated rows that several test modules share."""

import numpy as np
import pytest
import torch

from kernelsuite.batching import IGNORE_INDEX


def decreasing(lengths):
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable


def greedy(lengths, capacity):
    """Next fit in input order."""
    bin_ids, rooms = [], []
    for x in lengths:
        if not rooms or x > rooms[-1]:
            rooms.append(capacity)
        rooms[-1] -= x
        bin_ids.append(len(rooms) - 1)
    return np.array(bin_ids, dtype=np.int64), len(rooms)


def ffd(lengths, capacity):
    """Longest first, each into the lowest-numbered bin with room."""
    bin_ids, rooms = [0] * len(lengths), []
    for i in decreasing(lengths):
        b = next((b for b, room in enumerate(rooms) if room >= lengths[i]), len(rooms))
        if b == len(rooms):
            rooms.append(capacity)
        rooms[b] -= lengths[i]
        bin_ids[i] = b
    return np.array(bin_ids, dtype=np.int64), len(rooms)


def bfd(lengths, capacity):
    """Longest first, each into the bin with the least room that fits; among equal rooms
    the bin that changed last."""
    bin_ids, rooms, changed = [0] * len(lengths), [], []
    for t, i in enumerate(decreasing(lengths)):
        fits = [b for b, room in enumerate(rooms) if room >= lengths[i]]
        if fits:
            b = min(fits, key=lambda b: (rooms[b], -changed[b]))
        else:
            b = len(rooms)
            rooms.append(capacity)
            changed.append(0)
        rooms[b] -= lengths[i]
        changed[b] = t
        bin_ids[i] = b
    return np.array(bin_ids, dtype=np.int64), len(rooms)


ORACLES = {"greedy": greedy, "ffd": ffd, "bfd": bfd}


def check_packing(p, lengths, capacity):
    """Every sequence in exactly one bin, no bin over capacity, the lower bound holds."""
    assert p.bin_ids.dtype == np.int64 and p.bin_ids.shape == (len(lengths),)
    bins = p.bins()
    assert len(bins) == p.num_bins
    seen = np.concatenate(bins) if bins else np.zeros(0, np.int64)
    assert sorted(seen.tolist()) == list(range(len(lengths)))
    for b, members in enumerate(bins):
        assert (p.bin_ids[members] == b).all()
        assert list(members) == sorted(members)
    assert all(len(members) for members in bins), "an empty bin"
    loads = p.loads
    assert loads.tolist() == [sum(lengths[i] for i in members) for members in bins]  # exact
    assert (loads <= capacity).all()
    assert loads.sum() == sum(lengths)
    assert p.num_bins >= -(-sum(lengths) // capacity) == p.min_bins
    if p.num_bins:
        assert p.efficiency == pytest.approx(sum(lengths) / (p.num_bins * capacity))
        assert p.efficiency <= p.best_efficiency + 1e-12


PAD = -7


def documents(rng, lengths, vocab=1000):
    return [rng.integers(0, vocab, n) for n in lengths]


def check_rows(batch, docs, packing, capacity):
    """Each document sits whole and in order in its row; labels, positions, padding and
    segments agree with it, position by position."""
    ids, labels, pos = (t.numpy() for t in batch[:3])
    rows = packing.num_bins
    assert ids.shape == labels.shape == pos.shape == (rows, capacity)
    cu = batch.cu_seqlens.numpy()
    assert batch.cu_seqlens.dtype == torch.int32 and cu[0] == 0 and cu[-1] == rows * capacity
    segments = set(zip(cu[:-1].tolist(), cu[1:].tolist()))
    assert batch.max_seqlen == max(np.diff(cu), default=0)
    for r, members in enumerate(packing.bins()):
        t = 0
        for i in members:
            doc = docs[i][:packing.lengths[i]]
            n = len(doc)
            np.testing.assert_array_equal(ids[r, t:t + n], doc)
            if n:
                np.testing.assert_array_equal(labels[r, t:t + n - 1], doc[1:])
                assert labels[r, t + n - 1] == IGNORE_INDEX  # never the next document
                assert (r * capacity + t, r * capacity + t + n) in segments
            np.testing.assert_array_equal(pos[r, t:t + n], np.arange(n))
            t += n
        assert (ids[r, t:] == PAD).all() and (labels[r, t:] == IGNORE_INDEX).all()
        np.testing.assert_array_equal(pos[r, t:], np.arange(capacity - t))
        if t < capacity:
            assert (r * capacity + t, (r + 1) * capacity) in segments
