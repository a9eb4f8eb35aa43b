"""Packing benchmark cases: 1,000,000 lengths, each algorithm's Numba kernel against its
plain-Python reference, capacity 2048 and 8192, two length distributions:
- gamma: gamma(shape 5, scale 20) rounded and clipped to [10, 500] (mean about 100);
- mixed: a long-tailed mix, 80% short chat turns (gamma(2, 40) clipped to [8, 512]) and 20%
  documents uniform in [512, capacity].
The notes print each packing's efficiency beside the lower bound, and pack_for_ranks'
imbalance over 8 ranks. Check: the number of sequences whose bin differs from the
reference packing (0: the same bins). Each measurement records the packing's bins, the
lower bound (min_bins) and its efficiency.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ...batching import ALGORITHMS, pack_for_ranks, pack_sequences, reference
from ..registry import OURS, REFERENCE, Area, Case

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

    def details(x):  # the packing itself (the same bins from either implementation)
        p = pack_sequences(x, capacity, algorithm)
        return dict(bins=p.num_bins, min_bins=p.min_bins, efficiency=p.efficiency)

    tag = "" if n == N_LENGTHS else f"-n{n}"
    return Case(kernel="packing", name=f"{algorithm}-{distribution}-c{capacity}{tag}",
                params=dict(algorithm=algorithm, distribution=distribution,
                            capacity=capacity, n=n),
                flops=0.0, bytes=0.0, make_inputs=make_inputs, truth=truth,
                error=bins_differing, devices=("cpu",), details=details,
                impls={"numba": lambda x: pack_sequences(x, capacity, algorithm),
                       "python": lambda x: reference.pack_sequences(x, capacity, algorithm)})


def cases(device: str, size: str) -> list[Case]:
    if size == "tiny":
        return [packing_case(a, "mixed", 2048, TINY_LENGTHS) for a in ALGORITHMS]
    return [packing_case(a, d, c, N_LENGTHS) for d in DISTRIBUTIONS for c in CAPACITIES
            for a in ALGORITHMS]


def notes(device: str) -> list[str]:
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


AREA = Area("packing", "sequence packing into fixed-capacity bins: each algorithm's Numba "
            "kernel against its plain-Python reference", cases, {"cpu": ["numba", "python"]},
            {"numba": OURS, "python": REFERENCE}, notes=notes)
