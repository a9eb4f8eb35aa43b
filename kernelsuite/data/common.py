"""What TokenLoader and its reference share: argument checks, the window count, the
rank and world size, and the resumable position (epoch, next batch) with the fingerprint
of the corpus it belongs to."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .._checks import SEED_RANGE, check_epoch, check_seed, is_int, positive_int
from .shards import SAMPLE_BYTES, open_shard, shard_fingerprint


class DocBatch(NamedTuple):
    """A batch with document boundaries (loaders given eos_id): position_ids restart after
    every EOS; cu_seqlens (int32) and max_seqlen describe the documents of the flattened
    (batch * seq_len) tokens, ready for flash_attn_varlen_func."""
    x: torch.Tensor
    y: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int


def _shard_paths(paths) -> list:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    try:
        paths = list(paths)
    except TypeError:
        raise TypeError(f"paths must be a path or a sequence of paths, got {paths!r}") from None
    if not paths:
        raise ValueError("paths is empty: give at least one shard")
    for p in paths:
        if not isinstance(p, (str, os.PathLike)):
            raise TypeError(f"paths must hold str or os.PathLike, got {p!r}")
    return paths


def resolve_rank(rank, world_size) -> tuple[int, int]:
    """(rank, world_size) from the arguments, else from torch.distributed when it is
    initialised, else (0, 1)."""
    dist = torch.distributed
    live = dist.is_available() and dist.is_initialized()
    if world_size is None:
        if rank is not None and not live:
            raise ValueError("rank is given but world_size is not (and torch.distributed is "
                             "not initialised): give both")
        world_size = dist.get_world_size() if live else 1
    if rank is None:
        if world_size != 1 and not live:
            raise ValueError("world_size is given but rank is not (and torch.distributed is "
                             "not initialised): give both")
        rank = dist.get_rank() if live else 0
    world_size = positive_int(world_size, "world_size")
    if not is_int(rank) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, world_size={world_size}), got {rank!r}")
    return int(rank), world_size


def _device(device, pin_memory):
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"device {device!r} is not a torch device: {reason}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not supported: batches go to 'cpu' or "
                         "'cuda[:N]'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r} but this machine has "
                         f"{torch.cuda.device_count()} CUDA device(s)")
    if pin_memory is not None and not isinstance(pin_memory, (bool, np.bool_)):
        raise TypeError(f"pin_memory must be None or a bool, got {pin_memory!r}")
    if pin_memory is None:
        pin_memory = dev.type == "cuda"
    if pin_memory and dev.type != "cuda":
        raise ValueError(f"pin_memory=True needs a CUDA device, got device={device!r}")
    return dev, bool(pin_memory)


def _same(saved, ours) -> bool:
    """A saved setting equals ours with the same kind of value (4.0 is not 4, 1 not True)."""
    if ours is None or isinstance(ours, bool):
        return saved is ours or (isinstance(saved, np.bool_) and saved == ours)
    return is_int(saved) and saved == ours


class LoaderBase:
    """Checks arguments, opens the shards and keeps the position: `epoch` and `batch`, the
    next batch to hand out. Finishing an epoch moves to the next one; set_epoch(e) jumps
    to the start of epoch e (a no-op when e is the current epoch, so a resumed position
    survives the usual `loader.set_epoch(epoch)` at the top of an epoch loop)."""

    def __init__(self, paths, batch_size, seq_len, *, seed=0, shuffle=True, rank=None,
                 world_size=None, device="cpu", pin_memory=None, prefetch=2, eos_id=None):
        self.paths = _shard_paths(paths)
        self.batch_size = positive_int(batch_size, "batch_size")
        self.seq_len = positive_int(seq_len, "seq_len")
        seed = check_seed(seed)
        if not isinstance(shuffle, (bool, np.bool_)):
            raise TypeError(f"shuffle must be a bool, got {shuffle!r}")
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.device, self.pin_memory = _device(device, pin_memory)
        if not is_int(prefetch) or prefetch < 0:
            raise ValueError(f"prefetch must be an int >= 0, got {prefetch!r}")
        self.prefetch = int(prefetch)
        self.shards = [open_shard(p) for p in self.paths]
        dtypes = {s.dtype for s in self.shards}
        if len(dtypes) > 1:
            raise ValueError(f"paths mix token dtypes {sorted(d.name for d in dtypes)}; "
                             "a corpus uses one")
        self.token_dtype = self.shards[0].dtype
        if eos_id is not None:
            top = np.iinfo(self.token_dtype).max
            if not is_int(eos_id) or not 0 <= eos_id <= top:
                raise ValueError(f"eos_id must be None or an int in [0, {top}] "
                                 f"({self.token_dtype.name} tokens), got {eos_id!r}")
            eos_id = int(eos_id)
        self.eos_id = eos_id
        self.corpus = [shard_fingerprint(p) for p in self.paths]  # what state_dict names
        # window j of a shard covers tokens [j*L, j*L + L]: L + 1 tokens
        self.window_counts = np.array([max(0, (len(s) - 1) // self.seq_len)
                                       for s in self.shards], dtype=np.int64)
        self.num_windows = int(self.window_counts.sum())
        if len(self) == 0:
            raise ValueError(
                f"no full batch: the shards hold {self.num_windows} windows of "
                f"seq_len+1={self.seq_len + 1} tokens, fewer than world_size * batch_size "
                f"= {self.world_size} * {self.batch_size}")
        self.epoch = 0
        self.batch = 0
        self._generation = 0  # bumped when the position jumps: live iterators then stop

    def __len__(self) -> int:
        """Batches per epoch for this rank (every rank gets the same number)."""
        return self.num_windows // self.world_size // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        epoch = check_epoch(epoch)
        if epoch != self.epoch:
            self._jump(epoch, 0)

    _CHECKED = ("seed", "shuffle", "world_size", "batch_size", "seq_len", "num_windows",
                "eos_id")
    FORMAT = 2

    def state_dict(self) -> dict:
        """Where the loader is: load it into a loader over the same shards and settings
        (any rank) to continue with exactly the batches this one would yield next. The
        state names the settings and the corpus (per shard, in order: token count, dtype
        and a hash of its size and first and last bytes)."""
        return dict(format=self.FORMAT, epoch=self.epoch, batch=self.batch, rank=self.rank,
                    **{k: getattr(self, k) for k in self._CHECKED},
                    corpus=[dict(name=Path(p).name, **f) for p, f in zip(self.paths,
                                                                         self.corpus)])

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, Mapping):
            raise TypeError(f"state_dict must be a dict from state_dict(), got "
                            f"{type(state).__name__}")
        missing = [k for k in ("format", "epoch", "batch", "corpus") + self._CHECKED
                   if k not in state]
        if missing:
            raise ValueError(f"state_dict lacks {missing}: not a token loader's state "
                             "(format 1 states, saved before kernelsuite named the corpus, "
                             "cannot be checked and are not read)")
        if not _same(state["format"], self.FORMAT):
            raise ValueError(f"state_dict['format'] is {state['format']!r}; this version "
                             f"reads format {self.FORMAT}")
        self._check_corpus(state["corpus"])
        for key in self._CHECKED:
            if not _same(state[key], getattr(self, key)):
                raise ValueError(f"state_dict[{key!r}] is {state[key]!r} but this loader has "
                                 f"{getattr(self, key)!r}: it was saved over other shards or "
                                 "settings")
        epoch, batch = state["epoch"], state["batch"]
        if not (is_int(epoch) and 0 <= epoch < SEED_RANGE and is_int(batch)
                and 0 <= batch <= len(self)):
            raise ValueError(f"state_dict epoch/batch ({epoch!r}, {batch!r}) out of range "
                             f"(epoch must be an int in [0, 2**63), batch in [0, {len(self)}])")
        self._jump(int(epoch), int(batch))

    def _check_corpus(self, saved):
        keys = ("tokens", "dtype", "hash")
        if not isinstance(saved, (list, tuple)) or not all(
                isinstance(e, Mapping) and "name" in e and is_int(e.get("tokens"))
                and isinstance(e.get("dtype"), str) and isinstance(e.get("hash"), str)
                for e in saved):
            raise ValueError(f"state_dict['corpus'] is not a list of shard fingerprints "
                             f"(name, {', '.join(keys)}): {saved!r:.200}")
        if len(saved) != len(self.corpus):
            raise ValueError(f"state_dict['corpus'] lists {len(saved)} shards but this loader "
                             f"has {len(self.corpus)}: it was saved over another corpus")
        ident = [tuple(e[k] for k in keys) for e in saved]
        for i, (path, ours) in enumerate(zip(self.paths, self.corpus)):
            mine = tuple(ours[k] for k in keys)
            if mine == ident[i]:
                continue
            if mine in ident:
                j = ident.index(mine)
                raise ValueError(f"shard {i} ({path}) was shard {j} ({saved[j]['name']}) when "
                                 "the state was saved: the same shards in another order")
            diff = "; ".join(
                f"{k} {saved[i][k]!r} then, {ours[k]!r} now" if k != "hash" else
                f"content hash differs (size or first/last {SAMPLE_BYTES} bytes)"
                for k in keys if saved[i][k] != ours[k])
            raise ValueError(f"shard {i} ({path}) is not the shard the state was saved over "
                             f"({saved[i]['name']}): {diff}")

    def _jump(self, epoch, batch):
        self.epoch, self.batch = (epoch + 1, 0) if batch == len(self) else (epoch, batch)
        self._generation += 1
        self._stop_thread()

    def _stop_thread(self):
        """Stop prefetching for a live iterator (loaders with a background thread)."""

    def _advance(self):
        """One more batch handed out."""
        self.batch += 1
        if self.batch == len(self):
            self.epoch, self.batch = self.epoch + 1, 0

    def _check_live(self, generation):
        if generation != self._generation:
            raise RuntimeError("this iterator is stale: set_epoch, load_state_dict or a new "
                               "iter() moved the loader; iterate the loader again")
