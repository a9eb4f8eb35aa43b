"""kernelsuite's attention in Hugging Face transformers (5.x), under a name of your choice.

    from kernelsuite.integrations.transformers import register
    register()  # "kernelsuite"
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="kernelsuite")

transformers calls an attention function per layer as ``fn(module, query, key, value,
attention_mask, dropout=, scaling=, sliding_window=, softcap=, **kwargs)`` with q/k/v of
shape (batch, heads, seqlen, head_dim), k/v with fewer heads under GQA and, with a KV cache,
longer than q; it expects ``(out (batch, seqlen_q, heads, head_dim), weights)`` back.
``attention_mask`` is whatever the mask function registered under the same name made:
here, as for flash-attn, the 2-D padding mask or None, so both are registered (without the
mask function transformers skips masks and padding would be silently attended to).

Only :func:`register` imports transformers: importing kernelsuite (or this module) does not.
"""

from __future__ import annotations

from functools import partial

import torch

from ..attention import BACKENDS, flash_attn_func, flash_attn_varlen_func
from ..batching import pad_input, unpad_input

INSTALL_HINT = "pip install kernelsuite[transformers]"


def register(name: str = "kernelsuite", backend: str | None = None) -> str:
    """Registers kernelsuite's attention (and its mask function) in transformers under
    `name` and returns `name`, for ``attn_implementation=name`` in ``from_pretrained``,
    ``from_config`` or ``model.set_attn_implementation``.

    backend: as in :func:`kernelsuite.attention.flash_attn_func`; None is "auto" (Triton
    on CUDA, Numba on CPU). Registering a name again replaces its backend. ImportError
    without transformers; ValueError for a name transformers already uses for another
    implementation, or one it would treat as flash-attn ("flash" in it) or a Hub kernel
    ("/" in it).
    """
    backend = "auto" if backend is None else backend
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be None or one of {BACKENDS}, got {backend!r}")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty str, got {name!r}")
    if "flash" in name or "/" in name or "|" in name:
        raise ValueError(f"name {name!r}: transformers reads names with 'flash' as flash-attn "
                         "packages, with '/' as Hub kernels and with '|' as prefixes; choose "
                         "another, e.g. 'kernelsuite'")
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError as e:
        raise ImportError(f"kernelsuite's transformers integration needs transformers >= 5: "
                          f"{INSTALL_HINT}") from e
    taken = AttentionInterface._global_mapping.get(name)
    if name == "eager" or taken is not None and getattr(taken, "func", None) is not attention:
        raise ValueError(f"name {name!r} is already a transformers attention implementation; "
                         "choose another, e.g. 'kernelsuite'")
    AttentionInterface.register(name, partial(attention, backend=backend))
    AttentionMaskInterface.register(name, padding_mask)
    return name


def padding_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0,
                 attention_mask=None, device=None, **kwargs):
    """The mask function: what :func:`attention` gets as attention_mask. As transformers'
    flash_attention_mask: the 2-D (batch, keys) bool mask of the cached and new tokens,
    sliced to the last kv_length (sliding-window caches keep fewer), or None when every key
    is a token (causality and windows need no mask). A mask shorter than the keys marks a
    static cache's unused tail slots. generate drops an all-ones mask for names without
    "flash", so for a static cache (kv_length slots, of which the q_offset + q_length -
    kv_offset first hold tokens) the all-ones mask of the filled slots is made here."""
    if attention_mask is not None:
        attention_mask = attention_mask[:, -kv_length:]
        if attention_mask.shape[1] == kv_length and attention_mask.all():
            return None
        return attention_mask
    filled = int(q_offset + q_length - kv_offset)  # q_offset: a tensor for static caches
    if filled >= kv_length:
        return None
    return torch.ones(batch_size, filled, dtype=torch.bool, device=device)


def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
              sliding_window=None, softcap=None, is_causal=None, s_aux=None,
              position_ids=None, cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None,
              max_length_k=None, backend="auto", **kwargs):
    """The attention function (see the module docstring for the call). Causal is
    ``module.is_causal`` unless the model passes is_causal; with a cache (keys longer than
    queries) it is bottom-right aligned, as transformers expects. sliding_window=W means
    each query sees itself and the W - 1 keys before it: window_size=(W - 1, W - 1), as
    transformers gives flash-attn (causal makes the right side 0). softcap (Gemma2) and
    scaling (the softmax scale) pass through. Three layouts:

    - attention_mask (2-D, zeros at padding: see :func:`padding_mask`): the tokens are
      unpadded, run as variable-length sequences and padded back (zeros at padding);
    - cu_seq_lens_q/k and max_length_q/k (DataCollatorWithFlattening's flash kwargs), or
      position_ids that restart (packed sequences; no mask and as many keys as queries, so
      nothing cached): each sequence attends to itself only;
    - otherwise the batch runs as it is.

    Weights are never returned (None, as with flash-attn). dropout (the model's
    attention_dropout in training) drops attention probabilities in the kernels, with
    torch's generator (see kernelsuite.attention.flash_attn_func); s_aux (gpt-oss's
    attention sinks, one logit per head) passes as sinks, with its gradient.
    """
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (batch, seqlen, heads, dim)
    causal = bool(module.is_causal if is_causal is None else is_causal)
    window = (-1, -1) if sliding_window is None else (sliding_window - 1, sliding_window - 1)
    settings = dict(dropout_p=float(dropout or 0.0), softmax_scale=scaling, causal=causal,
                    window_size=window, softcap=softcap or 0.0, sinks=s_aux, backend=backend)
    if attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError("kernelsuite attention takes a 2-D padding mask (batch, keys), "
                             f"got shape {tuple(attention_mask.shape)}")
        if k.shape[1] > attention_mask.shape[1]:  # a static cache's unused tail
            k, v = k[:, :attention_mask.shape[1]], v[:, :attention_mask.shape[1]]
        # the queries are the last keys (left padding, as transformers' flash path assumes)
        q_tokens, q_index, cu_q, max_q, _ = unpad_input(q, attention_mask[:, -q.shape[1]:])
        k_tokens, _, cu_k, max_k, _ = unpad_input(k, attention_mask)
        v_tokens = unpad_input(v, attention_mask)[0]
        out = _varlen(q_tokens, k_tokens, v_tokens, (cu_q, max_q), (cu_k, max_k), settings)
        return pad_input(out, q_index, *q.shape[:2]), None
    if None not in (cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k):
        seqs_q, seqs_k = (cu_seq_lens_q, max_length_q), (cu_seq_lens_k, max_length_k)
    elif q.shape[1] == k.shape[1] and (seqs_q := _packed(position_ids, *q.shape[:2])):
        seqs_k = seqs_q
    else:
        return flash_attn_func(q, k, v, **settings), None
    out = _varlen(*(t.flatten(0, 1) for t in (q, k, v)), seqs_q, seqs_k, settings)
    return out.view(q.shape), None


def _varlen(q, k, v, seqs_q, seqs_k, settings):
    """flash_attn_varlen_func over tokens (total, heads, dim); seqs_q/k: (cu_seqlens,
    max_seqlen), as tensors or ints."""
    (cu_q, max_q), (cu_k, max_k) = seqs_q, seqs_k
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu_q.to(torch.int32),
                                  cu_seqlens_k=cu_k.to(torch.int32), max_seqlen_q=int(max_q),
                                  max_seqlen_k=int(max_k), **settings)


def _packed(position_ids, batch, seqlen):
    """(cu_seqlens, max_seqlen) of the sequences packed in the rows of position_ids, or None
    when each row is one sequence. A sequence starts at each row's first token and wherever
    the position is not the previous one + 1 (DataCollatorWithFlattening restarts them at
    0), as transformers' masks read packing (find_packed_sequence_indices)."""
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[-1] != seqlen:
        return None
    positions = position_ids.expand(batch, -1)
    starts = torch.ones_like(positions, dtype=torch.bool)
    starts[:, 1:] = positions[:, 1:] != positions[:, :-1] + 1
    if starts.sum() == batch:  # one host sync per layer, as transformers' flash path
        return None
    first = starts.flatten().nonzero().flatten()
    cu = torch.cat([first, first.new_tensor([batch * seqlen])])
    return cu, cu.diff().max()
