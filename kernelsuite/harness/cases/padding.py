"""Padding benchmark cases (CUDA only): unpad_input and pad_input of 64 x 2048 x 4096
bfloat16 with 30%, 50% and 70% padding, Triton against the reference gather/scatter. Bytes: the kept rows read
and written (unpad), the kept rows read and the whole padded tensor written (pad).
Check: max abs difference from the reference on the same inputs (0: exact).
"""

from __future__ import annotations

import torch

from ...batching import pad_input, unpad_input
from ..numerics import max_error_of
from ..registry import OURS, REFERENCE, Area, Case

PAD_SHAPE = (64, 2048, 4096)
TINY_PAD_SHAPE = (4, 64, 64)
PADDING = (0.3, 0.5, 0.7)


def padding_mask(batch, seqlen, fraction, device, seed=0):
    """Right-padded rows whose lengths are uniform around (1 - fraction) * seqlen."""
    gen = torch.Generator().manual_seed(seed)
    keep = 1 - fraction
    lo, hi = (max(0.0, 2 * keep - 1), 1.0) if keep >= 0.5 else (0.0, 2 * keep)
    lens = ((lo + (hi - lo) * torch.rand(batch, generator=gen)) * seqlen).long()
    return (torch.arange(seqlen)[None, :] < lens[:, None]).to(device)


def padding_cases_for(fraction, device, shape=PAD_SHAPE) -> list[Case]:
    batch, seqlen, dim = shape
    elt = 2  # bfloat16
    mask = padding_mask(batch, seqlen, fraction, "cpu")
    nnz = int(mask.sum())
    params = dict(batch=batch, seqlen=seqlen, dim=dim, dtype="bfloat16",
                  padding=round(1 - nnz / mask.numel(), 3))

    def unpad_inputs(dev):
        return torch.randn(shape, dtype=torch.bfloat16, device=dev), mask.to(dev)

    def pad_inputs(dev):
        m = mask.to(dev)
        indices = torch.nonzero(m.flatten()).flatten()
        return torch.randn(nnz, dim, dtype=torch.bfloat16, device=dev), indices

    def unpad(backend):
        return lambda x: unpad_input(*x, backend=backend)

    def pad(backend):
        return lambda x: pad_input(*x, batch, seqlen, backend=backend)

    tag = f"p{round(fraction * 100)}" + ("" if shape == PAD_SHAPE else
                                         "-" + "x".join(map(str, shape)))
    return [Case(kernel="padding", name=f"unpad-{tag}", params=dict(op="unpad", **params),
                 flops=0.0, bytes=2 * nnz * dim * elt, make_inputs=unpad_inputs,
                 impls={"triton": unpad("triton"), "torch": unpad("torch")},
                 truth=unpad("torch"), error=_padding_error, devices=("cuda",)),
            Case(kernel="padding", name=f"pad-{tag}", params=dict(op="pad", **params),
                 flops=0.0, bytes=(nnz + batch * seqlen) * dim * elt, make_inputs=pad_inputs,
                 impls={"triton": pad("triton"), "torch": pad("torch")},
                 truth=pad("torch"), error=_padding_error, devices=("cuda",))]


def _padding_error(output, want):
    """unpad returns (hidden, indices, cu_seqlens, max_seqlen, seqused): compare the
    tensors (and the max_seqlen, as an error of 0 or of its difference)."""
    if isinstance(want, tuple):
        extra = abs(output[3] - want[3])
        return max(extra, max_error_of(output[:3] + output[4:], want[:3] + want[4:]))
    return max_error_of(output, want)


def cases(device: str, size: str) -> list[Case]:
    """GPU only (devices=("cuda",)): the interpreter is a correctness tool, not timed (the
    tiny cases, for dry runs, excepted)."""
    if size == "tiny":
        return padding_cases_for(0.5, device, TINY_PAD_SHAPE)
    return [c for f in PADDING for c in padding_cases_for(f, device)]


AREA = Area("padding", "unpad_input/pad_input (GPU only): the Triton gather/scatter against "
            "the reference", cases, {"cuda": ["triton", "torch"]},
            {"triton": OURS, "torch": REFERENCE})
