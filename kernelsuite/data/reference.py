"""The reference TokenLoader: the same sampling written the usual PyTorch way, a map-style
Dataset of windows, torch's DistributedSampler(drop_last=True) and a DataLoader. No Numba.
Slow on purpose of being obvious; tests check TokenLoader yields identical batches."""

from __future__ import annotations

import bisect
import os
import weakref

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from .._checks import is_int
from .common import DocBatch, LoaderBase
from .shards import HEADER_BYTES, short_read


def _close(fds):
    for fd in fds:
        if fd is not None:
            os.close(fd)


class TokenWindows(Dataset):
    """Window i of the corpus: (x, y) int64 tensors of seq_len tokens, y shifted by one.

    shards: the open_shard arrays. Windows are read from the files with os.pread, not
    through the memory maps: a map of a file truncated while it is open kills the process
    with SIGBUS, a pread returns short and raises the OSError TokenLoader raises."""

    def __init__(self, shards, seq_len):
        self.shards, self.seq_len = shards, seq_len
        counts = [max(0, (len(s) - 1) // seq_len) for s in shards]
        self.first = np.cumsum([0] + counts).tolist()  # window index where each shard starts
        # shards without a window (maybe empty arrays, which have no file) are never read
        self.names = [s.filename if c else None for s, c in zip(shards, counts)]
        self._open()

    def _open(self):
        self._fds = [name and os.open(name, os.O_RDONLY) for name in self.names]
        weakref.finalize(self, _close, list(self._fds))

    def __getstate__(self):  # worker processes started by spawn open the files again
        return {k: v for k, v in self.__dict__.items() if k != "_fds"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._open()

    def __len__(self):
        return self.first[-1]

    def __getitem__(self, i):
        s = bisect.bisect_right(self.first, i) - 1
        dtype = self.shards[s].dtype
        start = (i - self.first[s]) * self.seq_len
        nbytes = (self.seq_len + 1) * dtype.itemsize
        data = os.pread(self._fds[s], nbytes, HEADER_BYTES + start * dtype.itemsize)
        if len(data) != nbytes:
            raise short_read(self.names[s])
        window = torch.from_numpy(np.frombuffer(data, dtype).astype(np.int64))
        return window[:-1], window[1:]


def documents(x: torch.Tensor, eos_id: int):
    """position_ids, cu_seqlens (int32) and max_seqlen of the documents in each row of x:
    a document ends at an EOS (inclusive) or at the end of its row."""
    batch, seq_len = x.shape
    starts = torch.zeros_like(x, dtype=torch.bool)
    starts[:, 0] = True
    starts[:, 1:] = x[:, :-1] == eos_id
    flat = starts.flatten()
    index = torch.arange(flat.numel())
    start_of = torch.cummax(torch.where(flat, index, 0), dim=0).values
    position_ids = (index - start_of).view(batch, seq_len)
    cu_seqlens = torch.cat([index[flat], torch.tensor([flat.numel()])]).to(torch.int32)
    return position_ids, cu_seqlens, int(cu_seqlens.diff().max())


class ReferenceTokenLoader(LoaderBase):
    """TokenLoader's signature and behaviour (order, resume, document fields), built from
    torch.utils.data parts. num_workers: the DataLoader's worker processes (0: none)."""

    def __init__(self, paths, batch_size, seq_len, *, seed=0, shuffle=True, rank=None,
                 world_size=None, device="cpu", pin_memory=None, prefetch=2, eos_id=None,
                 num_workers=0):
        super().__init__(paths, batch_size, seq_len, seed=seed, shuffle=shuffle, rank=rank,
                         world_size=world_size, device=device, pin_memory=pin_memory,
                         prefetch=prefetch, eos_id=eos_id)
        if not is_int(num_workers) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        self.dataset = TokenWindows(self.shards, self.seq_len)
        self.num_workers = int(num_workers)

    def _collate(self, items):
        x = torch.stack([item[0] for item in items])
        y = torch.stack([item[1] for item in items])
        if self.eos_id is None:
            return x, y
        return DocBatch(x, y, *documents(x, self.eos_id))

    def __iter__(self):
        self._generation += 1
        return self._iterate(self._generation)

    def _iterate(self, generation):
        sampler = DistributedSampler(self.dataset, num_replicas=self.world_size,
                                     rank=self.rank, shuffle=self.shuffle, seed=self.seed,
                                     drop_last=True)
        sampler.set_epoch(self.epoch)
        batches = list(BatchSampler(sampler, self.batch_size, drop_last=True))[self.batch:]
        workers = self.num_workers
        loader = DataLoader(self.dataset, batch_sampler=batches, collate_fn=self._collate,
                            num_workers=workers, pin_memory=self.pin_memory,
                            prefetch_factor=(self.prefetch or None) if workers else None)
        for batch in loader:
            self._check_live(generation)
            moved = [t.to(self.device, non_blocking=self.pin_memory)
                     if torch.is_tensor(t) else t for t in batch]
            self._advance()
            yield DocBatch(*moved) if isinstance(batch, DocBatch) else tuple(moved)
