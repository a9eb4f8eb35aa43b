"""Sequence packing (bin packing of lengths into fixed token budgets), compiled with Numba.

- greedy: next fit in input order. Each bin is a run of consecutive sequences; a sequence
  that does not fit closes the bin. O(n).
- ffd: first fit decreasing. Sequences by decreasing length (ties in input order), each into
  the lowest-numbered bin with room. Computed bin by bin (see _ffd) with a union-find over
  the lengths.
- bfd: best fit decreasing. Same order, each into the bin it fills most tightly (least room
  left); among equally tight bins, the one that reached that room last. The tightest room
  comes from a two-level bitset over room values 0..capacity, a stack per room holding its
  bins (_bfd), or, when capacity is large, from two heaps of bins (_bfd_heaps).

Both decreasing algorithms work on length ranks: while capacity is at most a few times the
number of sequences the ranks are the lengths 0..capacity themselves (a counting sort,
O(n + capacity) = O(n)), beyond that the distinct lengths, sorted (O(n log n)), so time and
memory never grow with capacity. They take the order from a counting sort over ranks,
stable, and write bins by sorted position before mapping them back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import trailing_zeros

from .common import Packing, check_algorithm, check_capacity, check_lengths


@njit(nogil=True, cache=True)
def _starts(ranks, m):
    """Counting sort, first half: in the order by rank (ties in input order), the
    sequences of rank x (0 <= x < m) take positions start[x] to start[x + 1] - 1."""
    start = np.zeros(m + 1, np.int64)
    for x in ranks:
        start[x + 1] += 1
    for x in range(1, m + 1):
        start[x] += start[x - 1]
    return start


@njit(nogil=True, cache=True)
def _unsort(ranks, start, sorted_bins, bin_ids):
    """Counting sort, second half: bin_ids[i] = the bin given to sequence i's position.
    Packing writes bins by position and this pass reads them back one stream per rank,
    in order: no random writes into bin_ids."""
    nxt = start[:-1].copy()
    for i in range(ranks.size):
        bin_ids[i] = sorted_bins[nxt[ranks[i]]]
        nxt[ranks[i]] += 1


def _ranks(lengths, capacity):
    """(ranks, values, dense): lengths[i] = values[ranks[i]], values increasing. Dense: the
    values are 0..capacity and the ranks the lengths, while that costs O(n); else the
    distinct lengths."""
    if capacity <= min(4 * lengths.size + 1024, 2**30):
        return lengths, np.arange(capacity + 1, dtype=np.int64), True
    values, ranks = np.unique(lengths, return_inverse=True)
    return ranks.reshape(-1).astype(np.int64), values.astype(np.int64), False


@njit(nogil=True, cache=True)
def _greedy(lengths, capacity, bin_ids):
    # sequence i fits the open bin while the running total stays under that bin's limit
    # (its first token's offset + capacity); comparing the running total, instead of
    # carrying the room left, keeps the loop free of a chain through the branch
    bins, total, limit = -1, 0, -1
    for i in range(lengths.size):
        total += lengths[i]
        if total > limit:
            bins += 1
            limit = total - lengths[i] + capacity
        bin_ids[i] = bins
    return bins + 1


@njit(nogil=True, cache=True)
def _ffd(ranks, values, capacity, dense, bin_ids):
    # Bin by bin: a bin takes the longest sequence left, then again and again the longest
    # left that fits (earliest first among equals): the same bins as putting each sequence,
    # longest first, into the first bin with room, and it needs no search over bins.
    m = values.size
    start = _starts(ranks, m)
    nxt = start[:-1].copy()  # rank x -> its next unplaced position
    sorted_bins = np.empty(ranks.size, np.int32)
    # longest[k] leads (union-find, path halving) to 1 + the highest rank < k with
    # sequences left, or to 0 when there is none; a rank whose sequences run out links
    # down to the next one, for good
    longest = np.arange(m + 1).astype(np.int32)  # int32: half the cache lines
    for x in range(m):
        if start[x + 1] == start[x]:
            longest[x + 1] = x
    bins, left = 0, ranks.size
    while left:
        room = capacity
        while True:
            # k: the number of values <= room
            k = room + 1 if dense else np.searchsorted(values, room, side="right")
            while longest[k] != k:
                longest[k] = longest[longest[k]]
                k = longest[k]
            if k == 0:
                break
            x = k - 1
            v = values[x]
            j, end = nxt[x], start[x + 1]
            take = end - j  # as many of this length as fit at once
            if v and room // v < take:
                take = room // v
            for t in range(j, j + take):
                sorted_bins[t] = bins
            nxt[x] = j + take
            if j + take == end:
                longest[k] = x
            room -= take * v
            left -= take
        bins += 1
    _unsort(ranks, start, sorted_bins, bin_ids)
    return bins


@njit(nogil=True, cache=True)
def _first_set(bits, summary, x):
    """The smallest set bit >= x of a bitset (with a summary bit per non-zero word), or -1."""
    w = x >> 6
    m = bits[w] & (np.uint64(0xFFFFFFFFFFFFFFFF) << np.uint64(x & 63))
    if m:
        return (w << 6) + trailing_zeros(m)
    w += 1
    s = w >> 6
    if s >= summary.size:
        return -1
    m = summary[s] & (np.uint64(0xFFFFFFFFFFFFFFFF) << np.uint64(w & 63))
    while True:
        if m:
            w = (s << 6) + trailing_zeros(m)
            return (w << 6) + trailing_zeros(bits[w])
        s += 1
        if s >= summary.size:
            return -1
        m = summary[s]


@njit(nogil=True, cache=True)
def _flip(bits, summary, r):
    """Toggle bit r, keeping the summary bit of its word equal to (word != 0)."""
    w = r >> 6
    bits[w] ^= np.uint64(1) << np.uint64(r & 63)
    bit = np.uint64(1) << np.uint64(w & 63)
    if bits[w]:
        summary[w >> 6] |= bit
    else:
        summary[w >> 6] &= ~bit


@njit(nogil=True, cache=True)
def _bfd(lengths, capacity, bin_ids):
    start = _starts(lengths, capacity + 1)
    sorted_bins = np.empty(lengths.size, np.int32)
    words = (capacity >> 6) + 1
    bits = np.zeros(words, np.uint64)  # bit r: some open bin has exactly r left
    summary = np.zeros((words >> 6) + 1, np.uint64)
    head = np.full(capacity + 1, -1, np.int64)  # room r -> last bin that reached it
    below = np.empty(lengths.size, np.int64)  # bin -> the bin under it in its room's stack
    bins = 0
    for x in range(capacity, -1, -1):
        j = start[x]
        while j < start[x + 1]:
            r = _first_set(bits, summary, x)  # the tightest room that fits
            if r >= 0:
                b = head[r]
                head[r] = below[b]
                if head[r] < 0:
                    _flip(bits, summary, r)
            else:
                b, r = bins, capacity
                bins += 1
            # the room left, while it fits x, stays the tightest that does (and this bin
            # tops its stack): the next sequences of length x go here too, as many as fit
            take = start[x + 1] - j
            if x and r // x < take:
                take = r // x
            sorted_bins[j:j + take] = b
            j += take
            r -= take * x
            below[b] = head[r]
            if head[r] < 0:
                _flip(bits, summary, r)
            head[r] = b
    _unsort(lengths, start, sorted_bins, bin_ids)
    return bins


@njit(nogil=True, cache=True)
def _before(a, b, room, stamp, tightest):
    """Heap order: tightest room first, the latest to reach it among equals (tightest), or
    the most room first."""
    if tightest:
        return room[a] < room[b] or (room[a] == room[b] and stamp[a] > stamp[b])
    return room[a] > room[b]


@njit(nogil=True, cache=True)
def _push(heap, size, b, room, stamp, tightest):
    i = size
    while i:
        parent = (i - 1) >> 1
        if not _before(b, heap[parent], room, stamp, tightest):
            break
        heap[i] = heap[parent]
        i = parent
    heap[i] = b
    return size + 1


@njit(nogil=True, cache=True)
def _pop(heap, size, room, stamp, tightest):
    """Drop heap[0]."""
    size -= 1
    last, i = heap[size], 0
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and _before(heap[c + 1], heap[c], room, stamp, tightest):
            c += 1
        if not _before(heap[c], last, room, stamp, tightest):
            break
        heap[i] = heap[c]
        i = c
    heap[i] = last
    return size


@njit(nogil=True, cache=True)
def _bfd_heaps(ranks, values, capacity, bin_ids):
    # _bfd for any capacity: open bins with room for the current length wait in `fits`, a
    # min-heap on (room, latest first), the others in `short`, a max-heap on room; lengths
    # only decrease, so a bin moves from short to fits once its room fits, and never back
    # until it is used
    n, m = ranks.size, values.size
    start = _starts(ranks, m)
    sorted_bins = np.empty(n, np.int32)
    room = np.empty(n, np.int64)  # bin -> room left
    stamp = np.empty(n, np.int64)  # bin -> when it reached that room
    fits, short = np.empty(n, np.int64), np.empty(n, np.int64)
    nf = ns = bins = clock = 0
    for x in range(m - 1, -1, -1):
        v = values[x]
        while ns and room[short[0]] >= v:
            b = short[0]
            ns = _pop(short, ns, room, stamp, False)
            nf = _push(fits, nf, b, room, stamp, True)
        j = start[x]
        while j < start[x + 1]:
            if nf:
                b = fits[0]
                nf = _pop(fits, nf, room, stamp, True)
                r = room[b]
            else:
                b, r = bins, capacity
                bins += 1
            take = start[x + 1] - j  # as many as fit, as in _bfd
            if v and r // v < take:
                take = r // v
            sorted_bins[j:j + take] = b
            j += take
            room[b], stamp[b] = r - take * v, clock
            clock += 1
            if room[b] >= v:
                nf = _push(fits, nf, b, room, stamp, True)
            else:
                ns = _push(short, ns, b, room, stamp, False)
    _unsort(ranks, start, sorted_bins, bin_ids)
    return bins


def pack_sequences(lengths, capacity, algorithm="ffd", truncate=False) -> Packing:
    """Pack sequences of the given lengths into bins of `capacity` tokens.

    lengths: 1-D integers (list, numpy array or CPU tensor), none negative. A length over
    capacity raises ValueError, unless truncate=True, which cuts it to capacity. capacity
    and the sum of the lengths are at most 2**62 - 1 (MAX_TOKENS); time and memory do not
    grow with capacity.
    algorithm: "ffd" (first fit decreasing, the default), "bfd" (best fit decreasing) or
    "greedy" (next fit in input order: no reordering). Deterministic.
    """
    capacity = check_capacity(capacity)
    algorithm = check_algorithm(algorithm)
    lengths = np.ascontiguousarray(check_lengths(lengths, capacity, truncate))
    if lengths.size >= 2**31:  # bins are int32 inside the kernels
        raise ValueError(f"lengths has {lengths.size} sequences, at most 2**31 - 1 pack")
    bin_ids = np.empty(lengths.size, np.int64)
    if algorithm == "greedy":
        bins = _greedy(lengths, capacity, bin_ids)
    else:
        ranks, values, dense = _ranks(lengths, capacity)
        if algorithm == "ffd":
            bins = _ffd(ranks, values, capacity, dense, bin_ids)
        elif dense:
            bins = _bfd(lengths, capacity, bin_ids)
        else:
            bins = _bfd_heaps(ranks, values, capacity, bin_ids)
    return Packing(bin_ids, int(bins), capacity, lengths)


@dataclass(frozen=True, eq=False)
class RankPacking:
    """Bins dealt to data-parallel ranks, step by step.

    assignment[t, r] is the bin rank r processes at step t; -1 is an empty row added so
    every rank has the same number of steps. tokens and attention are per rank: tokens and
    the attention cost, the sum of squared sequence lengths.
    """
    packing: Packing
    assignment: np.ndarray
    tokens: np.ndarray
    attention: np.ndarray

    def rank_bins(self, rank) -> np.ndarray:
        """The bins of one rank in step order (-1: an empty row)."""
        return self.assignment[:, rank]

    @property
    def token_imbalance(self) -> float:
        """max / mean - 1 of the tokens per rank: 0 is perfect balance."""
        return _imbalance(self.tokens)

    @property
    def attention_imbalance(self) -> float:
        """max / mean - 1 of the attention cost per rank."""
        return _imbalance(self.attention)

    @property
    def step_imbalance(self) -> float:
        """sum over steps of the costliest rank's attention cost / sum of the mean rank's,
        minus 1: the share of time ranks wait for the slowest one at each step, if time
        follows attention cost."""
        cost = np.append(_bin_costs(self.packing)[0], 0.0)[self.assignment]
        mean = cost.mean(axis=1).sum()
        return float(cost.max(axis=1).sum() / mean - 1) if mean > 0 else 0.0


def _imbalance(values):
    mean = values.mean() if values.size else 0
    return float(values.max() / mean - 1) if mean > 0 else 0.0


def _bin_costs(packing):
    """(attention, tokens) per bin: sum of squared lengths, sum of lengths."""
    lengths = packing.lengths
    attention = np.bincount(packing.bin_ids, weights=lengths.astype(np.float64) ** 2,
                            minlength=packing.num_bins)
    return attention, packing.loads


def pack_for_ranks(lengths, capacity, world_size, algorithm="ffd", truncate=False):
    """Pack, then deal the bins to `world_size` ranks so every rank gets the same number of
    bins (empty rows, -1, fill the last step) with balanced tokens and attention cost.

    The bins are sorted by attention cost (then tokens) and dealt one step of world_size
    bins at a time, so the bins of a step cost about the same; within a step the costliest
    bin goes to the rank with the least cost so far. Rows of `assignment` are steps: shuffle
    them freely, the balance stays. Returns a RankPacking; see its *_imbalance properties.
    """
    world_size = check_capacity(world_size, "world_size")
    packing = pack_sequences(lengths, capacity, algorithm, truncate)
    attention, tokens = _bin_costs(packing)
    order = np.lexsort((np.arange(packing.num_bins), -tokens, -attention))
    steps = -(-packing.num_bins // world_size)
    order = np.append(order, np.full(steps * world_size - order.size, -1)).reshape(
        steps, world_size)
    assignment = np.empty_like(order)
    rank_attention = np.zeros(world_size)
    rank_tokens = np.zeros(world_size, np.int64)
    cost = np.append(attention, 0.0)  # index -1: an empty row costs nothing
    load = np.append(tokens, 0)
    for t in range(steps):
        ranks = np.lexsort((np.arange(world_size), rank_tokens, rank_attention))
        assignment[t, ranks] = order[t]
        rank_attention[ranks] += cost[order[t]]
        rank_tokens[ranks] += load[order[t]]
    return RankPacking(packing, assignment, rank_tokens, rank_attention)
