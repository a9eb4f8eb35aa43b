"""Triton kernel for pad/unpad: both directions are one row gather.

out[i] = src[rows[i]], or zeros where rows[i] = -1. unpad gathers the kept rows (rows =
indices); pad gathers through the inverse map (rows[j] = position of row j in indices, -1
for padding), so every output element is written once and nothing is zero-filled first.
Each is the other's backward (RowGather).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _gather_rows_kernel(src, out, rows, n_rows, n_cols, src_stride, out_stride,
                        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_rows = r < n_rows
    cols = c < n_cols
    src_row = tl.load(rows + r, mask=in_rows, other=-1)
    # 64-bit offsets: rows * stride passes 2^31 elements at 64 x 2048 x 16384
    vals = tl.load(src + src_row.to(tl.int64)[:, None] * src_stride + c[None, :],
                   mask=(src_row >= 0)[:, None] & cols[None, :], other=0)
    tl.store(out + r.to(tl.int64)[:, None] * out_stride + c[None, :], vals,
             mask=in_rows[:, None] & cols[None, :])


def _gather_rows(src, rows):
    """out[i] = src[rows[i]] (zeros where rows[i] < 0) for 2-D src and 1-D rows."""
    # the kernel reads raw storage: rows dense, src columns at unit stride
    rows = rows.contiguous()
    if src.shape[1] > 1 and src.stride(1) != 1:
        src = src.contiguous()
    n_rows, n_cols = rows.numel(), src.shape[1]
    out = torch.empty(n_rows, n_cols, dtype=src.dtype, device=src.device)
    if n_rows and n_cols:
        block_c = min(triton.next_power_of_2(n_cols), 1024)
        block_r = max(1, 4096 // block_c)  # about 4096 elements per program
        grid = (triton.cdiv(n_rows, block_r), triton.cdiv(n_cols, block_c))
        _gather_rows_kernel[grid](src, out, rows, n_rows, n_cols, src.stride(0),
                                  out.stride(0), BLOCK_R=block_r, BLOCK_C=block_c,
                                  num_warps=4)
    return out


class RowGather(torch.autograd.Function):
    """out = src[rows] (zero rows where rows < 0); the backward gathers the output gradient
    through `inverse`, the map from src rows to output rows (-1 where none)."""

    @staticmethod
    def forward(ctx, src, rows, inverse):
        ctx.save_for_backward(rows, inverse)
        return _gather_rows(src, rows)

    @staticmethod
    def backward(ctx, grad):
        rows, inverse = ctx.saved_tensors
        return RowGather.apply(grad.contiguous(), inverse, rows), None, None


def inverse_rows(indices, n):
    """The map from the n padded rows to their position in indices, -1 for padding."""
    inv = torch.full((n,), -1, dtype=torch.int64, device=indices.device)
    inv[indices] = torch.arange(indices.numel(), device=indices.device)
    return inv
