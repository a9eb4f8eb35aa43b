"""Attention: flash-attn's API over Triton (CUDA) and Numba (CPU) kernels and a PyTorch reference."""

from .api import (BACKENDS, flash_attn_func, flash_attn_kvpacked_func,
                  flash_attn_qkvpacked_func, flash_attn_varlen_func,
                  flash_attn_varlen_kvpacked_func, flash_attn_varlen_qkvpacked_func)
from .kvcache import PagedKVCache, flash_attn_with_kvcache

__all__ = ["BACKENDS", "flash_attn_func", "flash_attn_kvpacked_func",
           "flash_attn_qkvpacked_func", "flash_attn_varlen_func",
           "flash_attn_varlen_kvpacked_func", "flash_attn_varlen_qkvpacked_func",
           "flash_attn_with_kvcache", "PagedKVCache"]
