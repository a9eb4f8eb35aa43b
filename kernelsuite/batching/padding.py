"""pad/unpad with flash-attn's bert_padding names and shapes: input checks, backend
choice, and the Triton kernel (triton_padding.py) or the PyTorch reference."""

from __future__ import annotations

import math

import torch

from .._checks import resolve_backend
from . import reference
from .common import check_indices, unpad_layout

BACKENDS = ("triton", "torch", "auto")
# what the Triton gather copies (the interpreter cannot load float8; bool and complex have
# no Triton type)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8,
                 torch.uint8, torch.int16, torch.int32, torch.int64)


def _resolve(backend, tensor):
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"hidden_states must be a tensor, got {type(tensor).__name__}")
    backend = resolve_backend(backend, tensor, BACKENDS, lambda t: "triton" if t.is_cuda and
                              t.dtype in TRITON_DTYPES else "torch")
    if backend == "triton" and tensor.dtype not in TRITON_DTYPES:
        raise TypeError(f"backend='triton' does not take hidden_states of {tensor.dtype}; "
                        "use backend='torch'")
    return backend


def _rows2d(x):
    """x as (rows, features), a view when x allows it (the kernel takes any row stride)."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def unpad_input(hidden_states, attention_mask, unused_mask=None, *, backend="auto"):
    """(batch, seqlen, ...) -> flash-attn's 5-tuple (hidden_unpadded (nnz, ...), indices
    (nnz,) int64 into the flattened batch * seqlen, cu_seqlens (batch + 1,) int32,
    max_seqlen int, seqused (batch,) int32), keeping the positions where attention_mask
    (bool or 0/1, (batch, seqlen)) is set. unused_mask (same form, flash-attn >= 2.6):
    positions that are allocated but unused; they are kept too and counted in cu_seqlens
    and max_seqlen, while seqused counts attention_mask's tokens only.

    backend: "triton" (CUDA; CPU under TRITON_INTERPRET=1), "torch" (the reference) or
    "auto" (triton on CUDA, else torch). Differentiable with respect to hidden_states.
    """
    if _resolve(backend, hidden_states) == "torch":
        return reference.unpad_input(hidden_states, attention_mask, unused_mask)
    indices, cu_seqlens, max_seqlen, seqused = unpad_layout(hidden_states, attention_mask,
                                                            unused_mask)
    from .triton_padding import RowGather, inverse_rows

    rows = _rows2d(hidden_states.flatten(0, 1))
    out = RowGather.apply(rows, indices, inverse_rows(indices, rows.shape[0]))
    return (out.reshape(indices.numel(), *hidden_states.shape[2:]), indices, cu_seqlens,
            max_seqlen, seqused)


def pad_input(hidden_states, indices, batch, seqlen, *, backend="auto"):
    """(nnz, ...) rows at `indices` of the flattened (batch * seqlen) -> (batch, seqlen,
    ...), zeros elsewhere: the inverse of unpad_input. Same backends; differentiable with
    respect to hidden_states. indices must be distinct and in range (checked)."""
    if _resolve(backend, hidden_states) == "torch":
        return reference.pad_input(hidden_states, indices, batch, seqlen)
    check_indices(hidden_states, indices, batch, seqlen)
    from .triton_padding import RowGather, inverse_rows

    indices = indices.long()
    out = RowGather.apply(_rows2d(hidden_states), inverse_rows(indices, batch * seqlen),
                          indices)
    return out.reshape(batch, seqlen, *hidden_states.shape[1:])
