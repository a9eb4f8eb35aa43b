"""What the packing kernels and their references share: the Packing result and the checks
of lengths, capacity and algorithm (done once, before any kernel runs)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._checks import is_int, positive_int

ALGORITHMS = ("ffd", "bfd", "greedy")
# The most tokens a capacity, a length or the sum of the lengths may hold: below 2^62, the
# kernels' int64 running totals (a sum plus a capacity, twice a budget) cannot overflow.
MAX_TOKENS = 2**62 - 1


@dataclass(frozen=True, eq=False)
class Packing:
    """Sequences assigned to bins of `capacity` tokens.

    bin_ids[i] is the bin of sequence i (int64); lengths are the lengths as packed (cut to
    capacity where truncate=True). Bins are numbered in the order they were opened.
    """
    bin_ids: np.ndarray
    num_bins: int
    capacity: int
    lengths: np.ndarray

    @property
    def loads(self) -> np.ndarray:
        """Tokens in each bin (int64, num_bins)."""
        loads = np.zeros(self.num_bins, np.int64)  # integers: bincount's float64 weights
        np.add.at(loads, self.bin_ids, self.lengths)  # round totals past 2^53
        return loads

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    @property
    def efficiency(self) -> float:
        """tokens / (num_bins * capacity): 1 means no padding (0.0 for no bins)."""
        return self.tokens / (self.num_bins * self.capacity) if self.num_bins else 0.0

    @property
    def min_bins(self) -> int:
        """The lower bound no packing can beat: ceil(tokens / capacity)."""
        return -(-self.tokens // self.capacity)

    @property
    def best_efficiency(self) -> float:
        """The efficiency of a packing into min_bins bins, the most any algorithm can reach."""
        return self.tokens / (self.min_bins * self.capacity) if self.min_bins else 0.0

    def bins(self) -> list[np.ndarray]:
        """Index arrays, one per bin, each in increasing sequence order."""
        order = np.argsort(self.bin_ids, kind="stable")
        counts = np.bincount(self.bin_ids, minlength=self.num_bins)
        return np.split(order, np.cumsum(counts)[:-1]) if self.num_bins else []

    def __repr__(self):
        return (f"Packing(sequences={len(self.bin_ids)}, num_bins={self.num_bins}, "
                f"capacity={self.capacity}, efficiency={self.efficiency:.4f})")


def check_capacity(capacity, name="capacity") -> int:
    return positive_int(capacity, name, MAX_TOKENS, "2**62 - 1")


def check_algorithm(algorithm) -> str:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    return algorithm


def as_lengths(lengths, name="lengths") -> np.ndarray:
    """lengths as a 1-D int64 array (from a list, numpy array or CPU tensor of integers)."""
    if isinstance(lengths, torch.Tensor):
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers, got a tensor of {lengths.dtype}")
        lengths = lengths.detach().cpu().numpy()
    elif isinstance(lengths, (list, tuple)) and any(isinstance(v, (bool, np.bool_))
                                                    for v in lengths):
        raise TypeError(f"{name} must hold integers, got a bool in {lengths!r:.80}")
    arr = np.asarray(lengths)
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and arr.max() > np.iinfo(np.int64).max:
        hi = int(arr.argmax())
        raise ValueError(f"{name}[{hi}] = {arr[hi]} does not fit int64")
    return arr.astype(np.int64, copy=False)


def total(arr) -> int:
    """The exact sum of non-negative int64 values (in halves, so no int64 sum overflows)."""
    return (int((arr >> 31).sum()) << 31) + int((arr & (2**31 - 1)).sum())


def check_lengths(lengths, capacity, truncate, name="lengths",
                  capacity_name="capacity") -> np.ndarray:
    """Validated int64 lengths, cut to capacity when truncate, else longer ones raise; their
    sum must stay within MAX_TOKENS."""
    arr = as_lengths(lengths, name)
    capacity = check_capacity(capacity, capacity_name)
    if not isinstance(truncate, (bool, np.bool_)):
        raise TypeError(f"truncate must be a bool, got {truncate!r}")
    if arr.size:
        lo, hi = int(arr.argmin()), int(arr.argmax())
        if arr[lo] < 0:
            raise ValueError(f"{name}[{lo}] = {arr[lo]} is negative")
        if arr[hi] > capacity:
            if not truncate:
                hint = "; pass truncate=True to cut such sequences" \
                    if capacity_name == "capacity" else ""
                raise ValueError(f"{name}[{hi}] = {arr[hi]} is longer than {capacity_name}="
                                 f"{capacity}{hint}")
            arr = np.minimum(arr, capacity)
        if min(int(arr[hi]), capacity) * arr.size > MAX_TOKENS and total(arr) > MAX_TOKENS:
            raise ValueError(f"{name} sum to {total(arr)} tokens, more than 2**62 - 1 (int64 "
                             "totals would overflow)")
    return arr


def check_mask(hidden_states, attention_mask, name="attention_mask") -> tuple[int, int]:
    """(batch, seqlen) of an unpad_input call; the mask must be 0/1 (bool or integer)."""
    if not isinstance(hidden_states, torch.Tensor):
        raise TypeError(f"hidden_states must be a tensor, got {type(hidden_states).__name__}")
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(attention_mask).__name__}")
    if attention_mask.ndim != 2:
        raise ValueError(f"{name} must be 2-D (batch, seqlen), got shape "
                         f"{tuple(attention_mask.shape)}")
    if hidden_states.ndim < 2 or hidden_states.shape[:2] != attention_mask.shape:
        raise ValueError(f"hidden_states must be (batch, seqlen, ...) with (batch, seqlen) = "
                         f"{name}.shape {tuple(attention_mask.shape)}, got shape "
                         f"{tuple(hidden_states.shape)}")
    if attention_mask.device != hidden_states.device:
        raise ValueError(f"{name} is on {attention_mask.device} but hidden_states is "
                         f"on {hidden_states.device}")
    dtype = attention_mask.dtype
    if dtype != torch.bool:
        if dtype.is_floating_point or dtype.is_complex:
            raise TypeError(f"{name} must be bool or integer, got {dtype}")
        if attention_mask.numel() and not ((attention_mask == 0) | (attention_mask == 1)).all():
            raise ValueError(f"{name} must hold only 0 and 1 (1 = a real token)")
    return attention_mask.shape[0], attention_mask.shape[1]


def unpad_layout(hidden_states, attention_mask, unused_mask=None):
    """What unpad_input returns besides the rows, after checking its arguments: (indices of
    the kept rows of the flattened batch * seqlen (int64), cu_seqlens (int32), max_seqlen,
    seqused (int32: the tokens attention_mask keeps per sequence)). Rows kept: those set
    in attention_mask or in unused_mask (allocated but unused, e.g. a cache's free slots:
    they count in cu_seqlens but not in seqused); the two masks must not overlap."""
    batch, _ = check_mask(hidden_states, attention_mask)
    used = attention_mask.bool()
    mask = used
    if unused_mask is not None:
        check_mask(hidden_states, unused_mask, "unused_mask")
        unused = unused_mask.bool()
        if (used & unused).any():
            raise ValueError("unused_mask overlaps attention_mask: a position is either a "
                             "real token (attention_mask) or allocated but unused, not both")
        mask = used | unused
    lengths = mask.sum(dim=1, dtype=torch.int32)
    indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
    return (indices, cu_seqlens, int(lengths.max()) if batch else 0,
            used.sum(dim=1, dtype=torch.int32))


def check_indices(hidden_states, indices, batch, seqlen):
    """Checks pad_input's arguments: indices are distinct rows of (batch * seqlen), one per
    row of hidden_states."""
    if not isinstance(hidden_states, torch.Tensor) or hidden_states.ndim < 1:
        raise TypeError("hidden_states must be a tensor (total_tokens, ...)")
    if not isinstance(indices, torch.Tensor) or indices.ndim != 1 \
            or indices.dtype not in (torch.int64, torch.int32):
        raise TypeError("indices must be a 1-D int64 or int32 tensor (as unpad_input returns)")
    for name, value in (("batch", batch), ("seqlen", seqlen)):
        if not is_int(value) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if batch * seqlen >= 2**63:
        raise ValueError(f"batch * seqlen = {batch * seqlen} rows do not fit int64 indices")
    if indices.numel() != hidden_states.shape[0]:
        raise ValueError(f"indices has {indices.numel()} entries but hidden_states has "
                         f"{hidden_states.shape[0]} rows")
    if indices.device != hidden_states.device:
        raise ValueError(f"indices is on {indices.device} but hidden_states is on "
                         f"{hidden_states.device}")
    if indices.numel():
        lo, hi = (int(v) for v in torch.aminmax(indices))
        if lo < 0 or hi >= batch * seqlen:
            raise ValueError(f"indices must lie in [0, batch * seqlen = {batch * seqlen}), "
                             f"got values in [{lo}, {hi}]")
        if torch.unique(indices).numel() != indices.numel():
            raise ValueError("indices must be distinct (each padded row is written once)")
