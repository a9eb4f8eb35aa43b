"""Batching benchmark cases.

packing: 1,000,000 lengths, each algorithm's Numba kernel against its plain-Python
reference, capacity 2048 and 8192, two length distributions:
- gamma: gamma(shape 5, scale 20) rounded and clipped to [10, 500] (mean about 100);
- mixed: a long-tailed mix, 80% short chat turns (gamma(2, 40) clipped to [8, 512]) and 20%
  documents uniform in [512, capacity].
The notes print each packing's efficiency beside the lower bound, and pack_for_ranks'
imbalance over 8 ranks. Check: the number of sequences whose bin differs from the
reference packing (0: the same bins).

padding (CUDA only): unpad_input and pad_input of 64 x 2048 x 4096 bfloat16 with 30%, 50%
and 70% padding, Triton against the reference gather/scatter. Bytes: the kept rows read
and written (unpad), the kept rows read and the whole padded tensor written (pad).
Check: max abs difference from the reference on the same inputs (0: exact).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ..batching import (ALGORITHMS, pack_for_ranks, pack_sequences, pad_input, reference,
                        unpad_input)
from .cases import Case, register, register_notes
from .numerics import max_error_of

N_LENGTHS = 1_000_000
TINY_LENGTHS = 10_000
CAPACITIES = (2048, 8192)
DISTRIBUTIONS = ("gamma", "mixed")


def lengths(distribution: str, capacity: int, n: int = N_LENGTHS) -> np.ndarray:
    return _lengths(distribution, capacity, n)


@lru_cache(maxsize=None)
def _lengths(distribution, capacity, n):
    rng = np.random.default_rng(0)
    if distribution == "gamma":
        return np.clip(rng.gamma(5, 20, n).round(), 10, 500).astype(np.int64)
    chat = np.clip(rng.gamma(2, 40, n).round(), 8, 512).astype(np.int64)
    docs = rng.integers(512, capacity + 1, n)
    return np.where(rng.random(n) < 0.8, chat, docs)


@lru_cache(maxsize=None)
def _reference_packing(distribution, capacity, algorithm, n):
    return reference.pack_sequences(lengths(distribution, capacity, n), capacity, algorithm)


def bins_differing(output, want) -> float:
    return float(np.count_nonzero(output.bin_ids != want.bin_ids))


def packing_case(algorithm, distribution, capacity, n=N_LENGTHS) -> Case:
    def make_inputs(device):
        return lengths(distribution, capacity, n)

    def truth(x):
        if x is lengths(distribution, capacity, n):  # the case's own lengths: computed once
            return _reference_packing(distribution, capacity, algorithm, n)
        return reference.pack_sequences(x, capacity, algorithm)

    tag = "" if n == N_LENGTHS else f"-n{n}"
    return Case(kernel="packing", name=f"{algorithm}-{distribution}-c{capacity}{tag}",
                params=dict(algorithm=algorithm, distribution=distribution,
                            capacity=capacity, n=n),
                flops=0.0, bytes=0.0, make_inputs=make_inputs, reference="python",
                truth=truth, error=bins_differing, devices=("cpu",),
                impls={"numba": lambda x: pack_sequences(x, capacity, algorithm),
                       "python": lambda x: reference.pack_sequences(x, capacity, algorithm)})


@register("packing", impls={"cpu": ["numba", "python"]})
def packing_cases(device: str, size: str) -> list[Case]:
    if size == "tiny":
        return [packing_case(a, "mixed", 2048, TINY_LENGTHS) for a in ALGORITHMS]
    return [packing_case(a, d, c, N_LENGTHS) for d in DISTRIBUTIONS for c in CAPACITIES
            for a in ALGORITHMS]


@register_notes("packing")
def packing_notes(device: str) -> list[str]:
    rows = []
    for d in DISTRIBUTIONS:
        for c in CAPACITIES:
            x = lengths(d, c)
            for a in ALGORITHMS:
                p = pack_sequences(x, c, a)
                rows.append(f"| {d} | {c} | {a} | {p.num_bins} | {p.min_bins} | "
                            f"{p.efficiency:.5f} | {p.best_efficiency:.5f} |")
    ranks = pack_for_ranks(lengths("mixed", 8192), 8192, 8)
    return ["Packing efficiency (tokens / (bins * capacity)) next to the lower bound "
            "ceil(tokens / capacity), 1,000,000 lengths:",
            "| distribution | capacity | algorithm | bins | min bins | efficiency | "
            "best possible |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows),
            f"pack_for_ranks(mixed, capacity 8192, 8 ranks): token imbalance "
            f"{ranks.token_imbalance:.2e}, attention imbalance {ranks.attention_imbalance:.2e}"
            f", per-step wait {ranks.step_imbalance:.3f} (max / mean - 1)."]


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
    """unpad returns (hidden, indices, cu_seqlens, max_seqlen): compare the tensors."""
    if isinstance(want, tuple):
        output, want = output[:3], want[:3]
    return max_error_of(output, want)


@register("padding", impls={"cuda": ["triton", "torch"]})
def padding_cases(device: str, size: str) -> list[Case]:
    """GPU only (devices=("cuda",)): the interpreter is a correctness tool, not timed (the
    tiny cases, for dry runs, excepted)."""
    if size == "tiny":
        return padding_cases_for(0.5, device, TINY_PAD_SHAPE)
    return [c for f in PADDING for c in padding_cases_for(f, device)]
