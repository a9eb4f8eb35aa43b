"""Corpora for the loader tests. In an "indexed" corpus token i of the whole corpus is i
(uint32), so a batch row says which window it came from: x[row, 0] // seq_len, counted
per shard."""

import numpy as np
import torch

from kernelsuite.data import write_shard


def indexed_corpus(directory, sizes, offset=0):
    """Shards of the given sizes whose tokens are their positions in the corpus + offset."""
    paths, start = [], offset
    for i, n in enumerate(sizes):
        paths.append(write_shard(directory / f"shard_{i:03d}.bin",
                                 np.arange(start, start + n, dtype=np.int64), "uint32"))
        start += n
    return paths


def random_corpus(directory, sizes, vocab=50, dtype="uint16", seed=0):
    rng = np.random.default_rng(seed)
    return [write_shard(directory / f"shard_{i:03d}.bin", rng.integers(0, vocab, n), dtype)
            for i, n in enumerate(sizes)]


def window_ids(batch, sizes, seq_len, offset=0):
    """(shard, window) of each row of an indexed corpus's batch."""
    starts = np.cumsum([0] + list(sizes)) + offset
    out = []
    for first in batch[0][:, 0].tolist():
        s = int(np.searchsorted(starts, first, side="right") - 1)
        j, rem = divmod(first - int(starts[s]), seq_len)
        assert rem == 0, "a row does not start at a window boundary"
        out.append((s, j))
    return out


def all_windows(sizes, seq_len):
    return {(s, j) for s, n in enumerate(sizes) for j in range(max(0, (n - 1) // seq_len))}


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for p, q in zip(a, b):
        assert type(p) is type(q) and len(p) == len(q)
        for u, v in zip(p, q):
            if torch.is_tensor(u):
                assert u.dtype == v.dtype and u.shape == v.shape and torch.equal(u, v)
            else:
                assert u == v
