"""Build a corpus of shards from numpy arrays of token ids or from text and a tokenizer
(`kernelsuite shards ...`). Tokens are streamed: memory stays at about one shard."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .shards import as_tokens, write_tokens


class ShardWriter:
    """Cuts a stream of token arrays into shards of shard_tokens tokens (the last may be
    shorter) named {prefix}_{index:06d}.bin in out_dir. Refuses to overwrite shards."""

    def __init__(self, out_dir, shard_tokens: int = 2**27, dtype="uint16", prefix="shard"):
        if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) \
                or shard_tokens < 1:
            raise ValueError(f"shard_tokens must be a positive int, got {shard_tokens!r}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        existing = sorted(self.out_dir.glob(f"{prefix}_*.bin"))
        if existing:
            raise FileExistsError(f"out_dir {self.out_dir} already holds shards named "
                                  f"{prefix}_*.bin ({existing[0].name}, ...); choose another "
                                  "directory or prefix")
        self.shard_tokens, self.dtype, self.prefix = shard_tokens, dtype, prefix
        self.paths: list[Path] = []
        self._parts: list[np.ndarray] = []
        self._pending = 0

    def add(self, tokens) -> None:
        arr = as_tokens(tokens, self.dtype)
        while arr.size:
            take = min(arr.size, self.shard_tokens - self._pending)
            self._parts.append(arr[:take])
            self._pending += take
            arr = arr[take:]
            if self._pending == self.shard_tokens:
                self._flush()

    def _flush(self):
        path = self.out_dir / f"{self.prefix}_{len(self.paths):06d}.bin"
        write_tokens(path, np.concatenate(self._parts))  # parts passed as_tokens in add
        self.paths.append(path)
        self._parts, self._pending = [], 0

    def close(self) -> list[Path]:
        if self._pending:
            self._flush()
        return self.paths


def build_shards(token_arrays: Iterable, out_dir, shard_tokens: int = 2**27,
                 dtype="uint16", prefix="shard") -> list[Path]:
    """Write the concatenation of token_arrays as shards; returns their paths."""
    writer = ShardWriter(out_dir, shard_tokens, dtype, prefix)
    for arr in token_arrays:
        writer.add(arr)
    return writer.close()


def load_tokenizer(spec: str) -> Callable[[str], Iterable[int]]:
    """A tokenizer callable from a spec: "bytes" (UTF-8 bytes, ids 0-255),
    "tiktoken:ENCODING" (e.g. tiktoken:gpt2, needs tiktoken), or "module:function"."""
    if spec == "bytes":
        return lambda text: np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"tokenizer must be 'bytes', 'tiktoken:ENCODING' or "
                         f"'module:function', got {spec!r}")
    if module == "tiktoken":
        import tiktoken

        return tiktoken.get_encoding(attr).encode_ordinary
    fn = importlib.import_module(module)
    for part in attr.split("."):
        fn = getattr(fn, part)
    if not callable(fn):
        raise TypeError(f"tokenizer {spec!r} is not callable")
    return fn


def text_documents(path, per_line: bool = False) -> Iterable[str]:
    """Documents of a UTF-8 text file: paragraphs separated by blank lines, or one per
    line with per_line=True. Empty documents are skipped."""
    with open(path, encoding="utf-8") as f:
        if per_line:
            for line in f:
                if line.strip():
                    yield line.rstrip("\n")
            return
        lines: list[str] = []
        for line in f:
            if line.strip():
                lines.append(line)
            elif lines:
                yield "".join(lines).rstrip("\n")
                lines = []
        if lines:
            yield "".join(lines).rstrip("\n")


def tokenize_documents(documents: Iterable[str], tokenizer, eos_id=None):
    """Token arrays of each document, each followed by eos_id when given."""
    eos = None if eos_id is None else np.array([eos_id], dtype=np.int64)
    for doc in documents:
        ids = np.asarray(tokenizer(doc))
        if ids.size == 0:
            ids = ids.astype(np.int64)
        yield ids if eos is None else np.concatenate([ids, eos])
