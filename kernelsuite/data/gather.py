"""The Numba window gather: a batch of windows from the shard files into int64 x and y
(and, with an EOS id, document position ids and cu_seqlens), widening in the same pass.

Window w of the corpus is window j = w - first[s] of shard s (first = cumulative window
counts), covering tokens [j*L, j*L + L]: x gets the first L, y the last L. Each window is
read with pread(2) into a staging row of the token dtype (4 KiB for L = 2048, cache
resident), then widened into x and y.

Why pread and not the shards' memory maps: a mapped page stays in the process's resident
set, and on current kernels one touch maps a whole large folio (2 MiB measured on ext4),
so random windows grow RSS by the corpus size within a few thousand batches; giving the
pages back (madvise) means a page fault per window afterwards, which costs more than a
pread. pread copies from the page cache and maps nothing: RSS stays flat at any corpus
size. Measured here (32 x 2048, uint16, 1 GiB corpus): pread 64 us per batch; reading a
fully mapped corpus 32 us, but with RSS grown by 1 GiB.
"""

from __future__ import annotations

import os

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .shards import HEADER_BYTES, short_read


@intrinsic
def _pread(typingctx, fd, dst, nbytes, offset):
    """libc pread(fd, dst's data, nbytes, offset): the bytes read, or -1 on error."""
    sig = types.intp(types.intp, dst, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        i64, i8p = ir.IntType(64), ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(i64, [ir.IntType(32), i8p, i64, i64])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "pread")
        data = context.make_array(signature.args[1])(context, builder, args[1]).data
        fd32 = builder.trunc(args[0], ir.IntType(32))
        return builder.call(fn, [fd32, builder.bitcast(data, i8p), args[2], args[3]])

    return sig, codegen


@njit(nogil=True, cache=True)
def _gather(fds, first, windows, stage, x, y, positions, cu_seqlens, eos_id):
    """Fill x, y (batch, L) from the windows, read from the shard files fds through the
    staging row stage (L + 1 tokens of the shard dtype). With eos_id >= 0 also positions
    (batch, L) and cu_seqlens (room for batch * L + 1). Returns (status, documents,
    max_seqlen); status -1 - s when shard s gave fewer bytes than its header promised."""
    batch, L = x.shape
    nbytes = (L + 1) * stage.itemsize
    for r in range(batch):
        w = windows[r]
        s = np.searchsorted(first, w, side="right") - 1
        offset = (w - first[s]) * L * stage.itemsize
        if _pread(fds[s], stage, nbytes, HEADER_BYTES + offset) != nbytes:
            return -1 - s, 0, 0
        xr = x[r]
        yr = y[r]
        for t in range(L):  # the widening pass
            xr[t] = stage[t]
            yr[t] = stage[t + 1]
        if eos_id >= 0:
            # a document ends at an EOS (inclusive); positions restart after it
            pr = positions[r]
            pos = 0
            for t in range(L):
                pr[t] = pos
                pos = 0 if stage[t] == eos_id else pos + 1
    docs = 0
    max_len = 0
    if eos_id >= 0:  # documents start where positions are 0
        n = batch * L
        flat = positions.reshape(n)
        for i in range(n):
            if flat[i] == 0:
                if docs:
                    max_len = max(max_len, i - cu_seqlens[docs - 1])
                cu_seqlens[docs] = i
                docs += 1
        max_len = max(max_len, n - cu_seqlens[docs - 1])
        cu_seqlens[docs] = n
    return 0, docs, max_len


# stand-ins without eos_id, of the same types, so one compiled kernel serves both
_NO_POSITIONS = np.empty((0, 0), np.int64)
_NO_CU_SEQLENS = np.empty(0, np.int32)


class ShardReader:
    """The shard files of a corpus, open for the gather (one file descriptor each)."""

    def __init__(self, paths, dtype):
        self.paths, self.dtype = list(paths), dtype
        self.fds = np.array([os.open(p, os.O_RDONLY) for p in self.paths], dtype=np.intp)

    def gather(self, first, windows, x, y, positions=None, cu_seqlens=None, eos_id=None):
        """Fill x, y (numpy int64 (batch, L)) and the document fields; returns
        (documents, max_seqlen), (0, 0) without eos_id."""
        if not self.fds.size:
            raise ValueError("the shard files are closed")
        stage = np.empty(x.shape[1] + 1, dtype=self.dtype)
        if eos_id is None:
            positions, cu_seqlens, eos_id = _NO_POSITIONS, _NO_CU_SEQLENS, -1
        status, docs, max_len = _gather(self.fds, first, windows, stage, x, y, positions,
                                        cu_seqlens, eos_id)
        if status < 0:
            raise short_read(self.paths[-1 - status])
        return docs, max_len

    def close(self):
        fds, self.fds = self.fds, np.zeros(0, dtype=np.intp)
        for fd in fds:
            os.close(int(fd))
