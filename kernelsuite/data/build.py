"""Build a corpus of shards from numpy arrays of token ids or from text and a tokenizer
(`kernelsuite shards ...`). Tokens are streamed: memory stays at about one shard (plus one
file's text with one document per file)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .shards import _token_dtype, as_tokens, remove_stale_temps, write_tokens


class ShardWriter:
    """Cuts a stream of token arrays into shards of shard_tokens tokens (the last may be
    shorter) named {prefix}_{index:06d}.bin in out_dir. Refuses to overwrite shards.

    On start it removes the temporary files of killed writers in out_dir (`removed`). As a
    context manager it closes on success and aborts on any error: abort() removes every
    shard it wrote and the directories it created, so a failed build leaves no partial
    corpus (and never touches files that were there before)."""

    def __init__(self, out_dir, shard_tokens: int = 2**27, dtype="uint16", prefix="shard"):
        if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, (int, np.integer)) \
                or shard_tokens < 1:
            raise ValueError(f"shard_tokens must be a positive int, got {shard_tokens!r}")
        if not isinstance(prefix, str) or not prefix or prefix.startswith(".") \
                or any(c in prefix for c in "/\\*?[\0"):
            raise ValueError(f"prefix must be a file name start without '/', '\\', glob "
                             f"characters or a leading '.', got {prefix!r}")
        _token_dtype(dtype)
        self.out_dir = Path(out_dir)
        missing = [d for d in [self.out_dir, *self.out_dir.parents] if not d.exists()]
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._created = missing  # deepest first: removed by abort() when left empty
        existing = sorted(self.out_dir.glob(f"{prefix}_*.bin"))
        if existing:
            raise FileExistsError(f"out_dir {self.out_dir} already holds shards named "
                                  f"{prefix}_*.bin ({existing[0].name}, ...); choose another "
                                  "directory or prefix")
        self.removed = remove_stale_temps(self.out_dir)
        self.shard_tokens, self.dtype, self.prefix = int(shard_tokens), dtype, prefix
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
        if path.exists():  # made by someone else since we started: not ours to replace
            raise FileExistsError(f"{path} appeared while the shards were being written")
        write_tokens(path, np.concatenate(self._parts))  # parts passed as_tokens in add
        self.paths.append(path)
        self._parts, self._pending = [], 0

    def close(self) -> list[Path]:
        if self._pending:
            self._flush()
        return self.paths

    def abort(self) -> None:
        """Remove what this writer wrote: its shards, then its directories if empty."""
        self._parts, self._pending = [], 0
        for path in self.paths:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        self.paths = []
        for directory in self._created:
            try:
                directory.rmdir()
            except OSError:  # not empty: something else is in it
                break

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


def build_shards(token_arrays: Iterable, out_dir, shard_tokens: int = 2**27,
                 dtype="uint16", prefix="shard") -> list[Path]:
    """Write the concatenation of token_arrays as shards; returns their paths. On an error
    no new shard remains."""
    with ShardWriter(out_dir, shard_tokens, dtype, prefix) as writer:
        for arr in token_arrays:
            writer.add(arr)
    return writer.paths


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


MODES = ("paragraph", "line", "file")


def _lines(path):
    """The lines of a UTF-8 file, line endings kept exactly; a ValueError naming the file,
    line and byte offset for bytes that are not UTF-8."""
    with open(path, "rb") as f:
        offset = 0
        for number, raw in enumerate(f, 1):  # b"\n" never occurs inside a UTF-8 sequence
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: not UTF-8 text: line {number}, byte offset "
                                 f"{offset + e.start}: {e.reason}") from None
            offset += len(raw)


def text_documents(path, mode: str = "paragraph", keep_separators: bool = False
                   ) -> Iterable[str]:
    """Documents of a UTF-8 text file. mode: "paragraph" (separated by blank lines), "line"
    (one per line) or "file" (the whole file, read at once).

    keep_separators=False (documents to be followed by an EOS): line endings around a
    paragraph or line and the blank lines between them are dropped, blank documents
    skipped; a "file" document is the file's text as it is. keep_separators=True (no EOS):
    the blank lines and line endings stay with the document before them (leading ones with
    the first), so the documents concatenate to exactly the file's text."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "file":
        text = "".join(_lines(path))
        if text if keep_separators else text.strip():
            yield text
        return
    if mode == "line":
        for line in _lines(path):
            if keep_separators:
                yield line
            elif line.strip():
                yield line.rstrip("\r\n")
        return
    doc: list[str] = []  # a paragraph's lines and the blank lines after it
    text = gap = False   # doc holds a text line; a blank line came after it
    for line in _lines(path):
        if line.strip():
            if gap:
                yield from _paragraph(doc, keep_separators)
                doc, gap = [], False
            text = True
        elif text:
            gap = True
        doc.append(line)
    yield from _paragraph(doc, keep_separators)


def _paragraph(lines, keep_separators):
    if keep_separators:
        if lines:
            yield "".join(lines)
        return
    doc = "".join(line for line in lines if line.strip()).rstrip("\r\n")
    if doc:
        yield doc


def tokenize_documents(documents: Iterable[str], tokenizer, eos_id=None):
    """Token arrays of each document, each followed by eos_id when given."""
    eos = None if eos_id is None else np.array([eos_id], dtype=np.int64)
    for doc in documents:
        ids = np.asarray(tokenizer(doc))
        if ids.size == 0:
            ids = ids.astype(np.int64)
        yield ids if eos is None else np.concatenate([ids, eos])
