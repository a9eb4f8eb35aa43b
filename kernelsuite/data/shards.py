"""Token shards: a 32-byte header that says what the file is, then the tokens.

    offset  size  field
    0       8     magic b"KSTOKENS"
    8       4     format version (uint32, little-endian), currently 1
    12      4     bytes per token: 2 (uint16) or 4 (uint32)
    16      8     token count (uint64)
    24      8     reserved, zero
    32      ...   the tokens, little-endian

`write_shard` writes to a temporary name in the same directory (".kstmp-PID-XXXXXXXX-NAME",
mode 0666 less the umask, like any new file) and renames it into place, so a reader never
sees a partial shard; `remove_stale_temps` removes the temporary files of writers that were
killed (their PID is gone). `open_shard` checks that the path is a regular file and the
header against the file size before it maps the tokens.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
import struct
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


TEMP_PREFIX = ".kstmp-"
_TEMP_NAME = re.compile(r"\.kstmp-(\d+)-[0-9a-f]{8}-")


def write_tokens(path: Path, arr: np.ndarray) -> Path:
    """write_shard for tokens already checked by as_tokens."""
    tmp = path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{path.name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
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


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's, or not a pid
        return True
    return True


def remove_stale_temps(directory) -> list[Path]:
    """Remove the temporary files that killed writers left in directory (those whose
    writer's PID is no longer running); returns their paths."""
    removed = []
    for tmp in sorted(Path(directory).glob(TEMP_PREFIX + "*")):
        match = _TEMP_NAME.match(tmp.name)
        if match and not _alive(int(match.group(1))):
            try:
                tmp.unlink()
            except FileNotFoundError:  # another process removed it first
                continue
            removed.append(tmp)
    return removed


def short_read(path) -> OSError:
    """The error for a shard that gave fewer bytes than its header promised."""
    return OSError(f"{path}: short read; the shard changed on disk after it was opened")


def _open_regular(path):
    """(binary file, size) of path, after checking it is a regular file: opening a FIFO
    for reading would wait for a writer (O_NONBLOCK opens it at once, to be refused)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else
                "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device or special file")
        raise ShardError(f"{path}: not a token shard: {kind}, not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), st.st_size


SAMPLE_BYTES = 4096


def shard_fingerprint(path) -> dict:
    """What tells a shard from another cheaply: its token dtype and count and a hash of its
    size, header and first and last SAMPLE_BYTES bytes of tokens (not a full read)."""
    f, size = _open_regular(path)
    with f:
        head = f.read(HEADER_BYTES + SAMPLE_BYTES)
        f.seek(max(len(head), size - SAMPLE_BYTES))
        tail = f.read(SAMPLE_BYTES)
    dtype, count = _check_header(path, head[:HEADER_BYTES], size)
    digest = hashlib.blake2b(size.to_bytes(8, "little") + head + tail, digest_size=16)
    return dict(tokens=int(count), dtype=dtype.name, hash=digest.hexdigest())


def read_header(path) -> tuple[np.dtype, int]:
    """(token dtype, token count) of a shard, after checking it is a regular file and its
    header and file size."""
    path = Path(path)
    f, size = _open_regular(path)
    with f:
        head = f.read(HEADER_BYTES)
    return _check_header(path, head, size)


def _check_header(path, head: bytes, size: int) -> tuple[np.dtype, int]:
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
