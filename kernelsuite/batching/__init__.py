"""Batching: sequence packing (Numba) with plain-Python references, packed rows for varlen
attention, a length-bucketing batch sampler, and pad/unpad (Triton) with PyTorch
references."""

from .collate import IGNORE_INDEX, PackedBatch, collate_packed
from .common import ALGORITHMS, Packing
from .packing import RankPacking, pack_for_ranks, pack_sequences
from .padding import pad_input, unpad_input
from .sampler import LengthBucketBatchSampler

__all__ = ["ALGORITHMS", "IGNORE_INDEX", "LengthBucketBatchSampler", "PackedBatch", "Packing",
           "RankPacking", "collate_packed", "pack_for_ranks", "pack_sequences", "pad_input",
           "unpad_input"]
