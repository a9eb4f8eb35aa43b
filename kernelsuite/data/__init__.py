"""Data loading: token shards, a Numba window gather, and a resumable, distributed
TokenLoader beside its PyTorch DataLoader reference."""

from .build import build_shards
from .common import DocBatch
from .loader import TokenLoader
from .reference import ReferenceTokenLoader, TokenWindows
from .shards import ShardError, open_shard, read_header, write_shard

__all__ = ["DocBatch", "ReferenceTokenLoader", "ShardError", "TokenLoader", "TokenWindows",
           "build_shards", "open_shard", "read_header", "write_shard"]
