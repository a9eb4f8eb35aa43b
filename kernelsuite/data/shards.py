"""Token shards: a 32-byte header that says what the file is, then the tokens.

    offset  size  field
    0       8     magic b"KSTOKENS"
    8       4     format version (uint32, little-endian), currently 1
    12      4     bytes per token: 2 (uint16) or 4 (uint32)
    16      8     token count (uint64)
    24      8     reserved, zero
    32      ...   the tokens, little-endian

`write_shard` writes to a temporary name in the same directory and renames it into place,
so a reader never sees a partial shard. `open_shard` checks the header against the file
size before it maps the tokens.
"""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import numpy as np

MAGIC = b"KSTOKENS"
VERSION = 1
HEADER = struct.Struct("<8sIIQ8x")
HEADER_BYTES = HEADER.size  # 32: keeps the tokens aligned for uint32
DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


class ShardError(ValueError):
    """A file that is not a valid token shard; the message names the file."""


def _token_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype).newbyteorder("<")
    if dt not in DTYPES.values():
        raise ValueError(f"dtype must be uint16 or uint32, got {np.dtype(dtype)}")
    return dt


def as_tokens(tokens, dtype=None, name="tokens") -> np.ndarray:
    """tokens (numpy array, torch tensor or sequence of ints) as a 1-D little-endian uint16
    or uint32 array; dtype=None picks uint16 when every id fits. Raises on anything that
    would change a value."""
    if hasattr(tokens, "detach"):  # torch tensor
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise TypeError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    lo = int(arr.min()) if arr.size else 0
    hi = int(arr.max()) if arr.size else 0
    if lo < 0:
        raise ValueError(f"{name} holds a negative id ({lo})")
    dt = _token_dtype(dtype) if dtype is not None else DTYPES[2 if hi < 2**16 else 4]
    if hi >= 2 ** (8 * dt.itemsize):
        raise ValueError(f"{name} holds id {hi}, which does not fit in {dt.name}")
    return np.ascontiguousarray(arr, dtype=dt)


def write_shard(path, tokens, dtype=None) -> Path:
    """Write tokens to a shard at path, atomically (temporary file, then rename).

    dtype: "uint16" or "uint32"; None picks uint16 when every id is below 65536."""
    return write_tokens(Path(path), as_tokens(tokens, dtype))


def write_tokens(path: Path, arr: np.ndarray) -> Path:
    """write_shard for tokens already checked by as_tokens."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(HEADER.pack(MAGIC, VERSION, arr.itemsize, arr.size))
            f.write(memoryview(arr).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def read_header(path) -> tuple[np.dtype, int]:
    """(token dtype, token count) of a shard, after checking its header and file size."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES:
        raise ShardError(f"{path}: truncated: {size} bytes, shorter than the "
                         f"{HEADER_BYTES}-byte header")
    magic, version, itemsize, count = HEADER.unpack(head)
    if magic != MAGIC:
        raise ShardError(f"{path}: not a token shard (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise ShardError(f"{path}: unsupported format version {version} (this kernelsuite "
                         f"reads version {VERSION})")
    if itemsize not in DTYPES:
        raise ShardError(f"{path}: unknown token dtype code {itemsize} (expected 2 for "
                         f"uint16 or 4 for uint32)")
    expected = HEADER_BYTES + count * itemsize
    if size != expected:
        what = "truncated" if size < expected else "oversized"
        raise ShardError(f"{path}: {what}: {size} bytes, but the header says {count} "
                         f"{DTYPES[itemsize].name} tokens ({expected} bytes)")
    return DTYPES[itemsize], count


def open_shard(path) -> np.ndarray:
    """The tokens of a shard as a read-only numpy memmap (an empty read-only array when the
    shard holds no tokens), after checking the header and the file size."""
    dtype, count = read_header(path)
    if count == 0:  # mmap cannot map zero bytes
        empty = np.empty(0, dtype)
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(count,))
