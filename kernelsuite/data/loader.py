"""TokenLoader: random windows of a sharded token corpus, gathered by a Numba kernel on a
background thread, resumable mid-epoch, split across ranks.

Order: epoch e visits the corpus's windows in torch.randperm(num_windows) drawn from a
generator seeded with seed + e (arange without shuffle), the order truncated to a multiple
of world_size and dealt out rank, rank + world_size, ... : the convention of
torch.utils.data.DistributedSampler(drop_last=True). Every rank then gets the same number
of batches of batch_size; what does not fill a batch is dropped. The reference
(`reference.py`) is built on that DistributedSampler and a DataLoader; tests check both
yield identical batches.
"""

from __future__ import annotations

import atexit
import collections
import queue
import threading
import weakref

import numpy as np
import torch

from .common import DocBatch, LoaderBase
from .gather import ShardReader

# the background thread hands batches over in groups of about this many bytes
CHUNK_BYTES = 8 << 20


class TokenLoader(LoaderBase):
    """Batches (x, y) of int64 (batch_size, seq_len), y = x shifted by one token; with
    eos_id, a DocBatch that adds position_ids, cu_seqlens and max_seqlen.

    paths: shard files (see write_shard). rank/world_size: default to torch.distributed's
    when it is initialised. device: where batches land; for CUDA they are gathered into
    pinned memory (pin_memory, default True there) and copied on a side stream with
    non_blocking. prefetch: batches prepared ahead by the background thread (0: none, no
    thread). Windows are read with pread(2) (gather.py says why), so the resident set
    stays flat over any number of batches. Batches are fresh tensors: keeping one is safe.
    """

    def __init__(self, paths, batch_size, seq_len, *, seed=0, shuffle=True, rank=None,
                 world_size=None, device="cpu", pin_memory=None, prefetch=2, eos_id=None):
        super().__init__(paths, batch_size, seq_len, seed=seed, shuffle=shuffle, rank=rank,
                         world_size=world_size, device=device, pin_memory=pin_memory,
                         prefetch=prefetch, eos_id=eos_id)
        self._reader = ShardReader(self.paths, self.token_dtype)
        # first[s]: index of shard s's first window in the corpus
        self._first = np.concatenate([[0], np.cumsum(self.window_counts)[:-1]]).astype(np.int64)
        self._active = None

    def windows(self, epoch: int) -> np.ndarray:
        """This rank's windows (corpus window indices) for the epoch, in order."""
        n, world = self.num_windows, self.world_size
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(n, generator=g).numpy()
        else:
            order = np.arange(n, dtype=np.int64)
        return np.ascontiguousarray(order[self.rank:n // world * world:world], dtype=np.int64)

    def gather(self, windows, pin_memory=False):
        """One batch of the given corpus windows as CPU tensors (fresh, or pinned)."""
        windows = np.ascontiguousarray(windows, dtype=np.int64)
        shape = (len(windows), self.seq_len)
        x = torch.empty(shape, dtype=torch.int64, pin_memory=pin_memory)
        y = torch.empty(shape, dtype=torch.int64, pin_memory=pin_memory)
        if self.eos_id is None:
            self._reader.gather(self._first, windows, x.numpy(), y.numpy())
            batch = (x, y)
        else:
            pos = torch.empty(shape, dtype=torch.int64, pin_memory=pin_memory)
            cu = torch.empty(shape[0] * shape[1] + 1, dtype=torch.int32, pin_memory=pin_memory)
            docs, max_len = self._reader.gather(self._first, windows, x.numpy(), y.numpy(),
                                                pos.numpy(), cu.numpy(), self.eos_id)
            batch = DocBatch(x, y, pos, cu[:docs + 1], max_len)
        return batch

    def __iter__(self):
        self._stop_thread()
        self._generation += 1
        batches = _Batches(self)
        self._active = weakref.ref(batches)  # a dropped iterator stops its thread
        return batches

    def _stop_thread(self):
        active = self._active and self._active()
        if active is not None:
            active.close()

    def close(self):
        """Stop the background thread and close the shard files."""
        self._stop_thread()
        self._reader.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class _ToDevice:
    """Brings CPU batches to a CUDA device with non_blocking copies on a side stream, so
    copies overlap the compute on the consumer's stream. Pinned buffers come from torch's
    caching host allocator, which reuses a block only after the copy out of it is done."""

    def __init__(self, loader):
        self.loader, self.device = loader, loader.device
        self.stream = torch.cuda.Stream(device=self.device)

    def __call__(self, windows):
        batch = self.loader.gather(windows, pin_memory=self.loader.pin_memory)
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            moved = [t.to(self.device, non_blocking=True) if torch.is_tensor(t) else t
                     for t in batch]
            event = torch.cuda.Event()
            event.record(self.stream)
        return type(batch)(*moved) if isinstance(batch, DocBatch) else tuple(moved), event


def _produce(fetch, windows, batch_size, start, chunk, stop, out):
    """Background thread: batches start, start+1, ... of the epoch into the queue, `chunk`
    batches per item (one hand-over per item: a hand-over between threads costs tens of
    microseconds, as much as gathering a batch)."""
    try:
        stop_at = len(windows) // batch_size
        for i in range(start, stop_at, chunk):
            item = [fetch(windows[j * batch_size:(j + 1) * batch_size])
                    for j in range(i, min(i + chunk, stop_at))]
            if not _put(out, item, stop):
                return
    except BaseException as e:  # handed to the consumer, raised there
        _put(out, _Failure(e), stop)


def _put(out, item, stop) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=0.05)
            return True
        except queue.Full:
            pass
    return False


class _Failure:
    def __init__(self, error):
        self.error = error


_LIVE: "weakref.WeakSet[_Batches]" = weakref.WeakSet()


@atexit.register
def stop_prefetch_threads():
    """Stop prefetch threads before the interpreter exits: a daemon thread frozen at exit
    inside torch's C++ code aborts the process ("terminate called without an active
    exception")."""
    for batches in list(_LIVE):
        thread = batches.thread
        batches.close()
        if thread is not None:
            thread.join(timeout=5)


class _Batches:
    """Iterator over the rest of the current epoch."""

    def __init__(self, loader: TokenLoader):
        self.loader = loader
        self.generation = loader._generation
        self.remaining = len(loader) - loader.batch
        self.cuda = loader.device.type == "cuda"
        fetch = _ToDevice(loader) if self.cuda else loader.gather
        self.fetch = fetch
        self.thread = None
        self.windows = loader.windows(loader.epoch) if self.remaining else None
        if loader.prefetch and self.remaining:
            self.stop = threading.Event()
            # hand batches over in chunks of about CHUNK_BYTES, at most `prefetch` of them
            per_batch = loader.batch_size * loader.seq_len * 8 * (2 if loader.eos_id is None
                                                                  else 3)
            chunk = max(1, min(loader.prefetch, CHUNK_BYTES // per_batch))
            self.queue = queue.Queue(maxsize=max(1, loader.prefetch // chunk))
            self.ready = collections.deque()
            self.thread = threading.Thread(
                target=_produce, name="TokenLoader", daemon=True,
                args=(fetch, self.windows, loader.batch_size, loader.batch, chunk, self.stop,
                      self.queue))
            self.thread.start()
            _LIVE.add(self)

    def __iter__(self):
        return self

    def __next__(self):
        loader = self.loader
        loader._check_live(self.generation)
        if self.remaining == 0:
            raise StopIteration
        if self.thread is None:
            i, b = loader.batch, loader.batch_size
            item = self.fetch(self.windows[i * b:(i + 1) * b])
        else:
            item = self._get()
        if self.cuda:
            batch, event = item
            current = torch.cuda.current_stream(loader.device)
            current.wait_event(event)
            for t in batch:
                if torch.is_tensor(t):
                    t.record_stream(current)  # allocated on the side stream, used here
        else:
            batch = item
        self.remaining -= 1
        loader._advance()
        return batch

    def _get(self):
        if self.ready:
            return self.ready.popleft()
        while True:
            try:
                item = self.queue.get(timeout=1.0)
            except queue.Empty:
                if not self.thread.is_alive():
                    raise RuntimeError("the TokenLoader thread stopped unexpectedly") from None
                continue
            if isinstance(item, _Failure):
                self.close()
                raise item.error
            self.ready.extend(item)
            return self.ready.popleft()

    def close(self):
        if self.thread is not None:
            self.stop.set()
            self.thread = None
            self.remaining = 0

    def __del__(self):
        self.close()
