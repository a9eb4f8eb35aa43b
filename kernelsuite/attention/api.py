"""Public attention functions: input validation, backend choice, autograd, torch.library ops.

Inputs are checked here, once (the attention settings by ``_params.AttnParams.make``);
kernels assume valid inputs. The kernels (Triton on CUDA, Numba on CPU) are reached through
two torch.library custom ops (forward and backward) with fake implementations and a
registered autograd formula, so ``torch.compile(fullgraph=True)`` traces through them on
either device.
"""

from __future__ import annotations

from typing import Optional

import torch

from .._checks import as_index, resolve_backend
from . import reference
from . import _dropout
from ._paged import check_paged, gather_paged
from ._params import AttnParams, check_flag, check_head_vector

BACKENDS = ("auto", "triton", "numba", "torch")
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIM_MIN, HEAD_DIM_MAX = 16, 256


# ----------------------------------------------------------------------------- validation


def _check_tensors(q, k, v, backend, varlen):
    """Checks q, k, v against each other and the (resolved) backend."""
    layout = "(total, heads, head_dim)" if varlen else "(batch, seqlen, heads, head_dim)"
    ndim = 3 if varlen else 4
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != ndim:
            raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")
    allowed = KERNEL_DTYPES + ((torch.float64,) if backend in ("torch", "numba") else ())
    if q.dtype not in allowed:
        raise TypeError(f"q.dtype must be one of {[str(d) for d in allowed]} for backend "
                        f"{backend!r}, got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name}.dtype ({t.dtype}) must match q.dtype ({q.dtype})")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    if not varlen and k.shape[0] != q.shape[0]:
        raise ValueError(f"k has batch {k.shape[0]} but q has batch {q.shape[0]}")
    head_dim = q.shape[-1]
    if not 1 <= head_dim <= HEAD_DIM_MAX:
        raise ValueError(f"head_dim (q.shape[-1]) must be in [1, {HEAD_DIM_MAX}], got "
                         f"{head_dim}")
    if k.shape[-1] != head_dim:
        raise ValueError(f"k.shape[-1] ({k.shape[-1]}) must equal q's head_dim ({head_dim})")
    heads_q, heads_kv = q.shape[-2], k.shape[-2]
    if heads_kv == 0 or heads_q % heads_kv:
        raise ValueError(f"q's heads ({heads_q}) must be a multiple of k/v's heads ({heads_kv})")


def _check_cu_seqlens(name, cu, total, device, batch=None):
    """Returns the sequence lengths (one host sync: the rules below need the values)."""
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(cu).__name__}")
    if cu.dtype != torch.int32:
        raise TypeError(f"{name} must be int32, got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"{name} must be 1-D of length batch + 1 >= 2, got shape "
                         f"{tuple(cu.shape)}")
    if batch is not None and cu.numel() != batch + 1:
        raise ValueError(f"{name} has length {cu.numel()} but cu_seqlens_q has {batch + 1}: "
                         "both must be batch + 1")
    if cu.device != device:
        raise ValueError(f"{name} is on {cu.device} but q is on {device}")
    if torch.compiler.is_compiling():
        return None  # reading the values would break the graph; checked in eager mode
    values = cu.tolist()
    if values[0] != 0:
        raise ValueError(f"{name}[0] must be 0, got {values[0]}")
    lengths = [b - a for a, b in zip(values, values[1:])]
    if min(lengths) < 0:
        raise ValueError(f"{name} must be non-decreasing, got {values}")
    if values[-1] != total:
        raise ValueError(f"{name}[-1] ({values[-1]}) must equal the number of tokens ({total})")
    return lengths


def _check_max_seqlen(name, value, lengths, total):
    """Returns the bound the kernels use: the longest sequence (eager) or, when the values
    cannot be read (torch.compile), value capped at the number of tokens. Kernels size their
    grids by it, so a loose max_seqlen (2**40 for 3-token sequences) costs nothing."""
    if as_index(value) is None:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = as_index(value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if lengths is None:
        return min(int(value), total)
    if value < max(lengths):
        raise ValueError(f"{name} ({value}) is less than the longest sequence ({max(lengths)})")
    return max(lengths)


def _auto(q):
    """"auto" is Triton for CUDA tensors, Numba for CPU tensors."""
    return "triton" if q.device.type == "cuda" else "numba"


def _resolve_backend(backend, q):
    if not isinstance(q, torch.Tensor):
        return backend  # _check_tensors names the problem
    return resolve_backend(backend, q, BACKENDS, _auto)


# ----------------------------------------------------------------------------- custom ops


def _kernels(backend):
    """The kernel module; imported on first use, so each backend works without the other's
    package."""
    if backend == "numba":
        from . import numba_flash

        return numba_flash
    from . import triton_flash

    return triton_flash


@torch.library.custom_op("kernelsuite::flash_attn_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            cu_seqlens_q: Optional[torch.Tensor], cu_seqlens_k: Optional[torch.Tensor],
            alibi_slopes: Optional[torch.Tensor], block_table: Optional[torch.Tensor],
            max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float, window_left: int,
            window_right: int, softcap: float, deterministic: bool, dropout_p: float,
            backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # dropout's (seed, offset) are drawn here, inside the op, as flash-attn does: the
    # draw advances torch's generator at run time, also under torch.compile, and the
    # backward gets them back as rng_state
    philox = _dropout.philox_state(q.device) if dropout_p > 0 else (0, 0)
    paged = {} if block_table is None else dict(block_table=block_table)  # Triton only
    out, lse = _kernels(backend).forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                         max_seqlen_k, softmax_scale, window_left,
                                         window_right, softcap, dropout_p=dropout_p,
                                         philox=philox, alibi_slopes=alibi_slopes, **paged)
    return out, lse, torch.tensor(philox, dtype=torch.int64)


@_fwd_op.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, alibi_slopes, block_table, max_seqlen_q,
      max_seqlen_k, *scalars):
    if cu_seqlens_q is None:
        lse_shape = (q.shape[0], q.shape[2], q.shape[1])
    else:
        lse_shape = (q.shape[1], q.shape[0])
    return (q.new_empty(q.shape), q.new_empty(lse_shape, dtype=reference.lse_dtype(q.dtype)),
            torch.empty(2, dtype=torch.int64, device="cpu"))


@torch.library.custom_op("kernelsuite::flash_attn_bwd", mutates_args=())
def _bwd_op(dout: torch.Tensor, dlse: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
            v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
            cu_seqlens_q: Optional[torch.Tensor], cu_seqlens_k: Optional[torch.Tensor],
            alibi_slopes: Optional[torch.Tensor], rng_state: torch.Tensor, max_seqlen_q: int,
            max_seqlen_k: int, softmax_scale: float, window_left: int, window_right: int,
            softcap: float, deterministic: bool, dropout_p: float, backend: str
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _kernels(backend).backward(dout, dlse, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                      max_seqlen_q, max_seqlen_k, softmax_scale, window_left,
                                      window_right, softcap, deterministic,
                                      dropout_p=dropout_p, philox=tuple(rng_state.tolist()),
                                      alibi_slopes=alibi_slopes)


@_bwd_op.register_fake
def _(dout, dlse, q, k, v, *rest):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_q, cu_k, alibi, _table, *params = inputs  # paged calls need no gradient
    out, lse, rng_state = output
    ctx.mark_non_differentiable(rng_state)
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, alibi, rng_state)
    ctx.params = params


def _backward(ctx, dout, dlse, _drng):
    q, k, v, out, lse, cu_q, cu_k, alibi, rng_state = ctx.saved_tensors
    if dlse is None:
        dlse = torch.zeros_like(lse)
    dq, dk, dv = _bwd_op(dout, dlse, q, k, v, out, lse, cu_q, cu_k, alibi, rng_state,
                         *ctx.params)
    # no gradient for cu_seqlens, the slopes (as flash-attn), the block table or the scalars
    return (dq, dk, dv) + (None,) * (4 + len(ctx.params))


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- public API


def _checked(q, k, v, backend, varlen, dropout_p, softmax_scale, causal, window_size,
             softcap, deterministic, return_attn_probs, return_lse):
    """(backend, AttnParams) of a call whose tensors and settings are valid."""
    backend = _resolve_backend("auto" if backend is None else backend, q)
    _check_tensors(q, k, v, backend, varlen)
    params = AttnParams.make(softmax_scale, causal, window_size, softcap, deterministic,
                             q.shape[-1], dropout_p)
    check_flag("return_attn_probs", return_attn_probs)
    check_flag("return_lse", return_lse)
    return backend, params


def _kernel_head_dim(head_dim: int) -> int:
    """The head_dim the kernels run: a multiple of 8, at least HEAD_DIM_MIN (flash-attn
    pads 59 or 111 the same way: zero columns change no score and give zero outputs)."""
    return max(HEAD_DIM_MIN, -(-head_dim // 8) * 8)


def _with_sinks(out, lse, sinks, varlen):
    """Attention with one more logit per head (sinks[h]) that takes probability mass and
    contributes nothing: out * exp(lse - lse'), lse' = logaddexp(lse, sink). Differentiable
    through out and lse (the kernels' backward takes dlse), so sinks get their gradient."""
    sink = sinks.to(lse.dtype)[:, None] if varlen else sinks.to(lse.dtype)[None, :, None]
    lse_all = torch.logaddexp(lse, sink)
    keep = torch.exp(lse - lse_all)  # (batch, heads, seqlen) or (heads, total)
    keep = keep.transpose(0, 1) if varlen else keep.transpose(1, 2)
    return (out * keep[..., None]).to(out.dtype), lse_all


def _run(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, params,
         return_attn_probs, return_lse, backend, alibi_slopes, sinks, block_table=None):
    """A checked call on its backend (the reference for "torch", else the custom op), with
    what flash-attn returns: out; (out, softmax_lse, S_dmask) with return_attn_probs
    (S_dmask only with dropout, else None); (out, lse) with return_lse."""
    varlen = cu_seqlens_q is not None
    batch = cu_seqlens_q.numel() - 1 if varlen else q.shape[0]
    if alibi_slopes is not None:
        check_head_vector("alibi_slopes", alibi_slopes, batch, q.shape[-2], q.device, True)
    if sinks is not None:
        check_head_vector("sinks", sinks, batch, q.shape[-2], q.device)
    params = params.bounded(max_seqlen_q, max_seqlen_k)
    settings = dict(dropout_p=params.dropout_p, softmax_scale=params.softmax_scale,
                    window_size=params.window, softcap=params.softcap,
                    alibi_slopes=alibi_slopes)
    lengths = (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) if varlen else ()
    ref = reference.flash_attn_varlen_func if varlen else reference.flash_attn_func
    if backend == "torch":
        philox = _dropout.philox_state(q.device) if params.dropout_p else None
        out, lse = ref(q, k, v, *lengths, **settings, return_lse=True, sinks=sinks,
                       philox=philox)
    else:
        head_dim = q.shape[-1]
        pad = _kernel_head_dim(head_dim) - head_dim
        qp, kp, vp = ((torch.nn.functional.pad(t, (0, pad)) for t in (q, k, v)) if pad
                      else (q, k, v))
        slopes = None if alibi_slopes is None else alibi_slopes.float().contiguous()
        out, lse, rng_state = _fwd_op(qp, kp, vp, cu_seqlens_q, cu_seqlens_k, slopes,
                                      block_table, max_seqlen_q, max_seqlen_k,
                                      *params.op_args(), backend)
        philox = tuple(rng_state.tolist()) if params.dropout_p and return_attn_probs else None
        out = out[..., :head_dim] if pad else out
        if sinks is not None:
            out, lse = _with_sinks(out, lse, sinks, varlen)
    if return_attn_probs:
        probs = None
        if params.dropout_p:  # flash-attn's S_dmask, built from the call's (seed, offset)
            with torch.no_grad():
                probs = ref(q, k, v, *lengths, **settings, philox=philox,
                            return_attn_probs=True)[2]
        return out, lse, probs
    return (out, lse) if return_lse else out


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False,
                    window_size=(-1, -1), softcap=0.0, alibi_slopes=None, deterministic=False,
                    return_attn_probs=False, *, backend=None, return_lse=False, sinks=None):
    """Attention over (batch, seqlen, heads, head_dim) tensors: flash-attn 2.8's
    flash_attn_func, positional order included.

    q (batch, seqlen_q, heads_q, d); k, v (batch, seqlen_k, heads_kv, d) with heads_q a
    multiple of heads_kv (GQA/MQA); d up to 256 (kernels pad it to a multiple of 8).
    causal masks are aligned bottom-right; window_size = (left, right), -1 unbounded;
    softcap > 0 applies softcap * tanh(scores / softcap). dropout_p drops probabilities
    (scaling the kept ones by 1 / (1 - dropout_p)) with a Philox mask drawn from torch's
    generator (reproducible under torch.manual_seed; recomputed, never stored, in the
    backward; see attention/_dropout.py). alibi_slopes (heads_q,) or (batch, heads_q) adds
    flash-attn's ALiBi bias: slope * col when causal (window (-1, 0)), else -slope *
    |row + seqlen_k - seqlen_q - col|; no gradient for the slopes, as flash-attn.
    Returns out like q; with return_attn_probs (out, softmax_lse, S_dmask): S_dmask
    (batch, heads_q, seqlen_q, seqlen_k) with dropout is flash-attn's test encoding
    (exp(score - row max), negated where dropped; built by the reference code from the
    call's random stream), None without; with return_lse (project option) (out, lse): the
    float32 log-sum-exp (batch, heads_q, seqlen_q), differentiable (float64 for float64
    inputs). sinks (keyword only, beyond flash-attn): (heads_q,) float logits, one extra
    key per head that takes probability mass and gives nothing (gpt-oss's attention
    sinks); differentiable; lse then includes them.
    deterministic=True makes the Triton backward bitwise reproducible (slightly slower;
    Numba's always is). Flags take bools or 0/1; integers anything with __index__.
    backend (keyword only): "triton" (CUDA), "numba" (CPU; float64 too), "torch" (the
    reference, any device, float64 too) or None/"auto" (Triton on CUDA, Numba on CPU).
    The Numba backend uses torch.get_num_threads() threads.
    """
    backend, params = _checked(q, k, v, backend, False, dropout_p, softmax_scale, causal,
                               window_size, softcap, deterministic, return_attn_probs,
                               return_lse)
    return _run(q, k, v, None, None, q.shape[1], k.shape[1], params, return_attn_probs,
                return_lse, backend, alibi_slopes, sinks)


def _reads_pages(q, k, v, backend, dropout_p, return_attn_probs) -> bool:
    """Whether a paged flash_attn_varlen_func call runs on the Triton forward reading the
    pages in place: no gradient wanted (the backward takes tokens), a head_dim the kernels
    take unpadded, and no S_dmask (built from tokens by the reference code). Otherwise the
    pages are gathered."""
    tensors = (q, k, v)
    if not (all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in tensors)
            and k.dim() == 4 and k.shape == v.shape and k.shape[0] and k.shape[1]):
        return False  # the gather path words the error
    if _resolve_backend("auto" if backend is None else backend, q) != "triton":
        return False
    d = q.shape[-1]
    return (not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
            and d == _kernel_head_dim(d) and k.shape[-1] == d
            and not (return_attn_probs and dropout_p))


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                           dropout_p=0.0, softmax_scale=None, causal=False,
                           window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                           deterministic=False, return_attn_probs=False, block_table=None, *,
                           backend=None, return_lse=False, sinks=None):
    """Attention over packed sequences: flash-attn 2.8's flash_attn_varlen_func.

    q (total_q, heads_q, d); k, v (total_k, heads_kv, d); cu_seqlens_q/k int32 of length
    batch + 1 (sequence b is rows cu[b]:cu[b+1]; empty sequences allowed); max_seqlen_q/k at
    least the longest sequence (ints, numpy ints or 0-dim tensors). Each sequence attends
    only to itself. Returns out like q, and the float32 log-sum-exp (heads_q, total_q) with
    return_lse or return_attn_probs (S_dmask then (batch, heads_q, max_seqlen_q,
    max_seqlen_k), zero past each sequence; alibi_slopes (batch, heads_q) index sequences;
    the dropout counter's row is the packed token index). With block_table (int32 (batch,
    max_blocks)), k and v are paged caches (num_blocks, page_size, heads_kv, d), any page
    size, and sequence b's keys are its first cu_seqlens_k[b+1] - cu_seqlens_k[b] logical
    rows: the Triton forward reads them in place where no gradient is wanted, otherwise
    (gradients, Numba, the reference) they are gathered into tokens (a copy). Other
    arguments as :func:`flash_attn_func`.
    """
    pages = None
    if block_table is not None:
        total_k = (int(cu_seqlens_k[-1]) if isinstance(cu_seqlens_k, torch.Tensor)
                   and cu_seqlens_k.dim() == 1 and cu_seqlens_k.numel() else 0)
        _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, total_k,
                          q.device if isinstance(q, torch.Tensor) else None)
        if _reads_pages(q, k, v, backend, dropout_p, return_attn_probs):
            check_paged(k, v, block_table, cu_seqlens_k, cu_seqlens_k.device)
            # the Triton forward reads the pages in place; the checks below see (total_k,
            # heads_kv, d) stand-ins (views, no copy)
            pages = (k, v)
            k, v = (t[0, 0].expand(total_k, *t.shape[2:]) for t in pages)
        else:  # gather each sequence's pages into tokens (a copy)
            k, v = gather_paged(k, v, block_table, cu_seqlens_k, cu_seqlens_k.device)
    backend, params = _checked(q, k, v, backend, True, dropout_p, softmax_scale, causal,
                               window_size, softcap, deterministic, return_attn_probs,
                               return_lse)
    lengths_q = _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.shape[0], q.device)
    lengths_k = _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], q.device,
                                  batch=cu_seqlens_q.numel() - 1)
    max_seqlen_q = _check_max_seqlen("max_seqlen_q", max_seqlen_q, lengths_q, q.shape[0])
    max_seqlen_k = _check_max_seqlen("max_seqlen_k", max_seqlen_k, lengths_k, k.shape[0])
    if pages is not None:
        k, v = pages
    # the Triton kernels read cu_seqlens as raw memory: a strided view must be copied
    return _run(q, k, v, cu_seqlens_q.contiguous(), cu_seqlens_k.contiguous(), max_seqlen_q,
                max_seqlen_k, params, return_attn_probs, return_lse, backend, alibi_slopes,
                sinks, None if pages is None else block_table)


def _unpacked(name, packed, parts, dim):
    """The `parts` tensors packed along `dim` of a flash-attn packed argument (qkv: 3, kv:
    2), as views, so gradients reach the packed tensor."""
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(packed).__name__}")
    if packed.ndim != dim + 3 or packed.shape[dim] != parts:
        layout = ("(batch, seqlen, " if dim == 2 else "(total, ") + f"{parts}, heads, head_dim)"
        raise ValueError(f"{name} must be {layout}, got shape {tuple(packed.shape)}")
    return packed.unbind(dim)


def flash_attn_qkvpacked_func(qkv, dropout_p=0.0, softmax_scale=None, causal=False,
                              window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                              deterministic=False, return_attn_probs=False, *, backend=None,
                              return_lse=False, sinks=None):
    """flash_attn_func on qkv (batch, seqlen, 3, heads, head_dim), as flash-attn's."""
    return flash_attn_func(*_unpacked("qkv", qkv, 3, 2), dropout_p, softmax_scale, causal,
                           window_size, softcap, alibi_slopes, deterministic,
                           return_attn_probs, backend=backend,
                           return_lse=return_lse, sinks=sinks)


def flash_attn_kvpacked_func(q, kv, dropout_p=0.0, softmax_scale=None, causal=False,
                             window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                             deterministic=False, return_attn_probs=False, *, backend=None,
                             return_lse=False, sinks=None):
    """flash_attn_func on q and kv (batch, seqlen_k, 2, heads_kv, head_dim), as
    flash-attn's."""
    return flash_attn_func(q, *_unpacked("kv", kv, 2, 2), dropout_p, softmax_scale, causal,
                           window_size, softcap, alibi_slopes, deterministic,
                           return_attn_probs, backend=backend,
                           return_lse=return_lse, sinks=sinks)


def flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_seqlen, dropout_p=0.0,
                                     softmax_scale=None, causal=False, window_size=(-1, -1),
                                     softcap=0.0, alibi_slopes=None, deterministic=False,
                                     return_attn_probs=False, *, backend=None,
                                     return_lse=False, sinks=None):
    """flash_attn_varlen_func on qkv (total, 3, heads, head_dim), as flash-attn's."""
    return flash_attn_varlen_func(*_unpacked("qkv", qkv, 3, 1), cu_seqlens, cu_seqlens,
                                  max_seqlen, max_seqlen, dropout_p, softmax_scale, causal,
                                  window_size, softcap, alibi_slopes, deterministic,
                                  return_attn_probs, backend=backend,
                           return_lse=return_lse, sinks=sinks)


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                    max_seqlen_k, dropout_p=0.0, softmax_scale=None,
                                    causal=False, window_size=(-1, -1), softcap=0.0,
                                    alibi_slopes=None, deterministic=False,
                                    return_attn_probs=False, *, backend=None,
                                    return_lse=False, sinks=None):
    """flash_attn_varlen_func on q and kv (total_k, 2, heads_kv, head_dim), as
    flash-attn's."""
    return flash_attn_varlen_func(q, *_unpacked("kv", kv, 2, 1), cu_seqlens_q, cu_seqlens_k,
                                  max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale, causal,
                                  window_size, softcap, alibi_slopes, deterministic,
                                  return_attn_probs, backend=backend,
                           return_lse=return_lse, sinks=sinks)
