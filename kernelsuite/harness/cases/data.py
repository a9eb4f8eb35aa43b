"""Data loading benchmark cases: TokenLoader against its DataLoader reference and a
nanoGPT-style get_batch, over a >= 1 GiB uint16 corpus the benchmark writes itself.

Bytes per batch (the bandwidth the memcpy fraction is taken of): tokens read from the
shards (batch * (seq_len + 1) * 2) plus x and y written as int64 (2 * batch * seq_len * 8).
Check: with the same seed, TokenLoader must hand over exactly the reference's batches, so
the error of a call's last batch is the number of tokens that differ from the reference's
(nanoGPT's get_batch draws other batches and is not compared).
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ...data import ReferenceTokenLoader, TokenLoader, read_header, write_shard
from ...data.loader import stop_prefetch_threads
from ...data.shards import HEADER_BYTES
from ..registry import ALTERNATIVE, OURS, REFERENCE, Area, Case
from ..timing import _status_kb

SHARDS, SHARD_TOKENS = 8, 1 << 26  # 8 x 128 MiB of uint16: 1 GiB
VOCAB = 50257  # GPT-2's
SHAPES = [(32, 2048), (8, 8192)]
# tiny (dry runs): 2 shards of 64k tokens, batches of 4 x 128, 4 per call
TINY = dict(shards=2, shard_tokens=1 << 16, shape=(4, 128), batches=4)
# one timed call fetches this many batches: a prefetching loader hands batches over in
# groups, so single fetches alternate fast and slow and their median would mislead
BATCHES_PER_CALL = 64


def corpus_dir() -> Path:
    return Path(os.environ.get("KERNELSUITE_BENCH_DATA",
                               Path(tempfile.gettempdir()) / "kernelsuite-bench-corpus"))


def bench_corpus(tiny: bool = False) -> list[Path]:
    """The benchmark corpus: random GPT-2-vocabulary tokens, written on first use and kept
    in corpus_dir() (override with KERNELSUITE_BENCH_DATA) for later runs; tiny: a small
    one beside it."""
    if tiny:
        return _corpus(corpus_dir() / "tiny", TINY["shards"], TINY["shard_tokens"])
    return _corpus(corpus_dir(), SHARDS, SHARD_TOKENS)


@lru_cache(maxsize=None)
def _corpus(directory: Path, shards: int, shard_tokens: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"bench_{i:03d}.bin" for i in range(shards)]
    rng = np.random.default_rng(0)
    for path in paths:
        try:
            if read_header(path) == (np.dtype("<u2"), shard_tokens):
                continue
        except (OSError, ValueError):
            pass
        write_shard(path, rng.integers(0, VOCAB, shard_tokens, dtype=np.uint16))
    return paths


def _in_page_cache(paths):
    """paths, after reading every file once: the tables compare loaders with memcpy, so
    every implementation must find the corpus in the page cache, not on the disk (a corpus
    evicted by an earlier benchmark's memory use made the loader 25x slower)."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(16 << 20):
                pass
    return paths


def nanogpt_get_batch(paths, batch, seq_len, device):
    """nanoGPT's get_batch: a fresh np.memmap each call (its fix for memory growth), random
    offsets, a Python loop of slices, astype(int64), torch.stack; one shard per batch."""
    path = paths[int(torch.randint(len(paths), ()))]
    data = np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_BYTES)
    ix = torch.randint(len(data) - seq_len, (batch,))
    x = torch.stack([torch.from_numpy(data[i:i + seq_len].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + seq_len].astype(np.int64))
                     for i in ix])
    if torch.device(device).type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
        y = y.pin_memory().to(device, non_blocking=True)
    return x, y


def _forever(loader):
    while True:
        yield from loader


def _batches(make_loader, n):
    def run(x):
        if "it" not in x:  # built on the first (warm-up) call, then reused
            x["it"] = _forever(make_loader(x))
        for _ in range(n):
            batch = next(x["it"])
        return batch
    return run


IMPLS = ["numba", "torch", "nanogpt_get_batch"]
ROLES = {"numba": OURS, "torch": REFERENCE, "nanogpt_get_batch": ALTERNATIVE}


def make_case(batch, seq_len, tiny=False) -> Case:
    n = TINY["batches"] if tiny else BATCHES_PER_CALL

    def make_inputs(device):
        return dict(paths=_in_page_cache(bench_corpus(tiny)), device=device)

    def loader(cls):
        return lambda x: cls(x["paths"], batch, seq_len, device=x["device"])

    def get_batches(x):
        for _ in range(n):
            out = nanogpt_get_batch(x["paths"], batch, seq_len, x["device"])
        return out

    def truth(x):  # the reference's batches from the start (x holds the impl's iterator)
        return _batches(loader(ReferenceTokenLoader), n)(dict(paths=x["paths"],
                                                              device=x["device"]))

    impls = {"numba": _batches(loader(TokenLoader), n),
             "torch": _batches(loader(ReferenceTokenLoader), n),
             "nanogpt_get_batch": get_batches}
    return Case(kernel="data", name=f"tokens-b{batch}-s{seq_len}",
                params=dict(batch=batch, seq_len=seq_len, batches_per_call=n), flops=0.0,
                bytes=n * (batch * (seq_len + 1) * 2 + 2 * batch * seq_len * 8),
                make_inputs=make_inputs, impls=impls, tokens=n * batch * seq_len,
                host_bytes=n * 2 * batch * seq_len * 8,  # x and y (int64) to a GPU
                truth=truth, error=tokens_differing, unchecked=("nanogpt_get_batch",))


def tokens_differing(output, want) -> float:
    """Elements of (x, y) that differ from the reference's batch (0: identical)."""
    return float(sum(int((a.cpu() != b.cpu()).sum()) for a, b in zip(output, want)))


def cases(device: str, size: str) -> list[Case]:
    if size == "tiny":
        return [make_case(*TINY["shape"], tiny=True)]
    return [make_case(b, s) for b, s in SHAPES]


def _rss_mib() -> float:
    return _status_kb("VmRSS") / 1024


def rss_over_batches(batches=10_000, batch=32, seq_len=2048, device="cpu"):
    """Resident set (MiB) of this process along a TokenLoader run over the benchmark
    corpus: {batches seen: RSS}, from before the first batch to the last."""
    loader = TokenLoader(bench_corpus(), batch, seq_len, device=device)
    marks = {0: _rss_mib()}
    it = _forever(loader)
    for i in range(1, batches + 1):
        next(it)
        if i in (1, 100, 1000) or i % 2500 == 0:
            marks[i] = _rss_mib()
    loader.close()
    return marks


def notes(device: str) -> list[str]:
    files = bench_corpus()
    size = sum(p.stat().st_size for p in files) / 2**30
    marks = rss_over_batches(device=device)
    trail = ", ".join(f"{k}: {v:.0f}" for k, v in marks.items())
    return [f"Corpus: {len(files)} uint16 shards, {size:.2f} GiB, in {corpus_dir()}.",
            f"RSS (MiB) over 10,000 TokenLoader batches of 32 x 2048, by batches seen: "
            f"{trail}; growth {marks[10_000] - marks[1]:+.0f} MiB after the first batch."]


# a TokenLoader's prefetch thread must stop before a benchmark process exits (SIGABRT)
AREA = Area("data", "token batches from shards: TokenLoader against its DataLoader "
            "reference and nanoGPT's get_batch", cases, {"cpu": IMPLS, "cuda": IMPLS}, ROLES,
            notes=notes, teardown=stop_prefetch_threads)
