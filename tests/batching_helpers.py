"""The packing algorithms by their definitions, one sequence at a time over every bin:
slow (O(n * bins)) and obviously right, the oracle for the kernels and the references."""

import numpy as np


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
