"""FlexAttention as a benchmark peer (not an area: this package skips modules named _*).

torch.compile(flex_attention) on the CPU is inductor's generated C++: it needs this torch to
have FlexAttention and inductor to find a C++ compiler, and it runs the forward only
(torch raises NotImplementedError for a CPU backward). The first call compiles; shapes after
the first recompile are compiled as dynamic (torch.compile's default).
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def compiled_flex():
    """torch.compile(flex_attention), or None where it cannot run on the CPU here."""
    try:
        from torch._inductor import cpp_builder
        from torch.nn.attention.flex_attention import flex_attention

        cpp_builder.get_cpp_compiler()
    except Exception:  # an older torch, or no compiler: the peer does not run here
        return None
    return torch.compile(flex_attention)


@functools.cache
def causal_block_mask(seqlen_q, seqlen_k):
    """flash-attn's causal mask (bottom-right aligned) as a FlexAttention block mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    off = seqlen_k - seqlen_q

    def causal(b, h, q_idx, kv_idx):
        return q_idx + off >= kv_idx

    return create_block_mask(causal, None, None, seqlen_q, seqlen_k, device="cpu")


def flex(q, k, v, causal=False):
    """Attention of (batch, seqlen, heads, d) tensors (GQA allowed) through the compiled
    FlexAttention, in the same layout."""
    mask = causal_block_mask(q.shape[1], k.shape[1]) if causal else None
    out = compiled_flex()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                          block_mask=mask, enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2)
