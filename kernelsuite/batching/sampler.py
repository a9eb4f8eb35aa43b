"""A length-bucketing batch sampler: batches of similar lengths under a token budget."""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from .._checks import check_epoch, check_seed
from ..data.common import resolve_rank
from .common import check_capacity, check_lengths


@njit(nogil=True, cache=True)
def _cut(lengths, max_tokens, max_batch_size, padded):
    """End positions of the batches cut from lengths in order: a batch grows while it costs
    at most max_tokens (rows * longest when padded, else the sum) and holds at most
    max_batch_size sequences. lengths come longest first and max_tokens is at most
    MAX_TOKENS, so no cost passes 2 * max_tokens < 2^63."""
    ends = np.empty(lengths.size, np.int64)
    nb, count, longest, total = 0, 0, 0, 0
    for i in range(lengths.size):
        x = lengths[i]
        if count:
            cost = (count + 1) * max(longest, x) if padded else total + x
            if cost > max_tokens or count == max_batch_size:
                ends[nb] = i
                nb += 1
                count, longest, total = 0, 0, 0
        count += 1
        longest = max(longest, x)
        total += x
    if count:
        ends[nb] = lengths.size
        nb += 1
    return ends[:nb]


class LengthBucketBatchSampler(torch.utils.data.Sampler):
    """Yields lists of dataset indices, each a batch of similar lengths that costs at most
    max_tokens: batch size * longest length (padded=True, for padded batches) or the sum of
    lengths (padded=False, for packed / varlen batches).

    Each epoch: the indices are shuffled (seed + epoch; shuffle=False keeps them in order),
    cut into buckets of bucket_size (default: one bucket, the whole dataset), each bucket is
    sorted by decreasing length (stable, so ties stay shuffled) and cut into batches, and
    the batches are shuffled. With world_size > 1 every rank gets every world_size-th
    batch and the same number of batches: the last ones are dropped (drop_last=True) or
    the first ones repeated, as DistributedSampler does. Call set_epoch(e) before each
    epoch. rank and world_size default to torch.distributed's when it is initialised.
    """

    def __init__(self, lengths, max_tokens, *, max_batch_size=None, bucket_size=None,
                 shuffle=True, seed=0, drop_last=False, padded=True, rank=None,
                 world_size=None):
        self.max_tokens = check_capacity(max_tokens, "max_tokens")
        self.lengths = check_lengths(lengths, self.max_tokens, False,
                                     capacity_name="max_tokens")
        self.max_batch_size = (self.lengths.size + 1 if max_batch_size is None
                               else check_capacity(max_batch_size, "max_batch_size"))
        self.bucket_size = (max(1, self.lengths.size) if bucket_size is None
                            else check_capacity(bucket_size, "bucket_size"))
        self.shuffle, self.seed = bool(shuffle), check_seed(seed)
        self.drop_last, self.padded = bool(drop_last), bool(padded)
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.epoch = 0
        self._cache = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = check_epoch(epoch)

    def batches(self, epoch=None) -> list[np.ndarray]:
        """Every rank's batches of an epoch (default: the current one), in order."""
        epoch = self.epoch if epoch is None else check_epoch(epoch)
        n = self.lengths.size
        gen = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(n, generator=gen).numpy() if self.shuffle else np.arange(n)
        out = []
        for lo in range(0, n, self.bucket_size):
            bucket = order[lo:lo + self.bucket_size]
            bucket = bucket[np.argsort(-self.lengths[bucket], kind="stable")]
            ends = _cut(self.lengths[bucket], self.max_tokens, self.max_batch_size,
                        self.padded)
            out += np.split(bucket, ends[:-1])
        if self.shuffle:
            out = [out[i] for i in torch.randperm(len(out), generator=gen).tolist()]
        return out

    def _rank_batches(self):
        if self._cache is None or self._cache[0] != self.epoch:
            every = self.batches()
            w = self.world_size
            per_rank = len(every) // w if self.drop_last else -(-len(every) // w)
            if every:  # repeat from the start until it divides (at most w - 1 batches)
                every = (every * (1 + w))[:per_rank * w]
            self._cache = (self.epoch, every[self.rank::w])
        return self._cache[1]

    def __iter__(self):
        for batch in self._rank_batches():
            yield batch.tolist()

    def __len__(self):
        return len(self._rank_batches())
