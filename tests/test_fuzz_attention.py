"""Property-based fuzzing of the attention API (hypothesis): random shapes, masks, windows,
softcaps, packed lengths and bad arguments. Every valid call matches the float64 truth
(the DESIGN.md rule, via check_attention); a NaN or Inf anywhere reaches exactly what the
row-by-row oracle says; every invalid call is a TypeError or ValueError, never anything
else. Small shapes: the module runs in well under a minute (Triton interpreted)."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attention_helpers import DEVICES, check_attention, cu_seqlens, row_oracle
from kernelsuite.attention import flash_attn_func, flash_attn_varlen_func
from kernelsuite.harness.numerics import FLOOR


def fuzz(examples):
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


windows = st.one_of(st.just(-1), st.integers(0, 12), st.sampled_from([2**31, 2**63 - 1]))


@st.composite
def dense_problems(draw, max_seq=20):
    heads_kv = draw(st.integers(1, 2))
    return dict(
        batch=draw(st.integers(1, 2)), seqlen_q=draw(st.integers(0, max_seq)),
        seqlen_k=draw(st.integers(0, max_seq)), heads_kv=heads_kv,
        heads_q=heads_kv * draw(st.integers(1, 2)), head_dim=draw(st.sampled_from([16, 24, 32])),
        causal=draw(st.booleans()), window_size=(draw(windows), draw(windows)),
        softcap=draw(st.sampled_from([0.0, 0.0, 2.5, 30.0])),
        softmax_scale=draw(st.one_of(st.none(), st.floats(0.05, 2.0))),
        seed=draw(st.integers(0, 2**16)))


def _tensors(p, total_q=None, total_k=None):
    g = torch.Generator().manual_seed(p["seed"])
    if total_q is None:
        shape_q = (p["batch"], p["seqlen_q"], p["heads_q"], p["head_dim"])
        shape_k = (p["batch"], p["seqlen_k"], p["heads_kv"], p["head_dim"])
    else:
        shape_q = (total_q, p["heads_q"], p["head_dim"])
        shape_k = (total_k, p["heads_kv"], p["head_dim"])
    return (torch.randn(shape_q, generator=g), torch.randn(shape_k, generator=g),
            torch.randn(shape_k, generator=g))


def _cancellation_floor(q, k, v, scale):
    """check_attention's floor per output. The error floor of a gradient is set by the terms
    that cancel in it, not by its value: with one visible key dS = P * (dP - delta) is exactly
    0, and float32 leaves eps * |dP| * |k| behind. dP = dO . v, with dO ~ N(0, 1) of q's
    shape (check_attention's); a few eps of those terms, and DESIGN.md's floor otherwise."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    dp = 4 * math.sqrt(q.shape[-1]) * (v.abs().max().item() if v.numel() else 0)
    terms = dict(dq=scale * dp * (k.abs().max().item() if k.numel() else 0),
                 dk=scale * dp * (q.abs().max().item() if q.numel() else 0))
    eps = torch.finfo(q.dtype).eps

    def floor(name, truth):
        magnitude = max(1.0, truth.abs().max().item() if truth.numel() else 0.0)
        return max(FLOOR[q.dtype] * magnitude, 16 * eps * terms.get(name, 0.0))
    return floor


def _kwargs(p):
    return {n: p[n] for n in ("causal", "window_size", "softcap", "softmax_scale")}


@fuzz(40)
@given(dense_problems(), st.booleans())
def test_numba_dense_matches_truth(p, lse_grad):
    q, k, v = _tensors(p)
    check_attention(q, k, v, backend="numba", lse_grad=lse_grad,
                    floor=_cancellation_floor(q, k, v, p["softmax_scale"]), **_kwargs(p))


@st.composite
def varlen_problems(draw, max_len=12):
    p = draw(dense_problems())
    n = draw(st.integers(1, 4))
    p["lengths_q"] = draw(st.lists(st.integers(0, max_len), min_size=n, max_size=n))
    p["lengths_k"] = draw(st.lists(st.integers(0, max_len), min_size=n, max_size=n))
    p["slack"] = draw(st.sampled_from([0, 0, 1, 2**20]))  # max_seqlen above the longest
    return p


def _varlen(p, device):
    q, k, v = _tensors(p, sum(p["lengths_q"]), sum(p["lengths_k"]))
    args = (cu_seqlens(p["lengths_q"], device), cu_seqlens(p["lengths_k"], device),
            max(p["lengths_q"]) + p["slack"], max(p["lengths_k"]) + p["slack"])
    return [x.to(device) for x in (q, k, v)], args


@fuzz(30)
@given(varlen_problems())
def test_numba_varlen_matches_truth(p):
    (q, k, v), args = _varlen(p, "cpu")
    check_attention(q, k, v, backend="numba", varlen=args,
                    floor=_cancellation_floor(q, k, v, p["softmax_scale"]), **_kwargs(p))


@fuzz(6)
@given(varlen_problems(max_len=9))
def test_triton_varlen_matches_truth(p):
    """Interpreted on CPU without a GPU: few, tiny examples."""
    (q, k, v), args = _varlen(p, DEVICES["triton"])
    check_attention(q, k, v, backend="triton", varlen=args,
                    floor=_cancellation_floor(q, k, v, p["softmax_scale"]), **_kwargs(p))


@fuzz(30)
@given(dense_problems(max_seq=10), st.sampled_from(["q", "k", "v", "dout"]),
       st.sampled_from([math.nan, math.inf, -math.inf]), st.data())
def test_numba_non_finite_reaches_exactly_its_dependents(p, where, value, data):
    q, k, v = _tensors(p)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(p["seed"] + 1))
    x = dict(q=q, k=k, v=v, dout=dout)
    if x[where].numel():
        at = tuple(data.draw(st.integers(0, n - 1)) for n in x[where].shape)
        x[where][at] = value
    kw = dict(causal=p["causal"], window_size=p["window_size"], softcap=p["softcap"])
    leaves = [x[n].clone().requires_grad_() for n in ("q", "k", "v")]
    out, lse = flash_attn_func(*leaves, return_lse=True, backend="numba", **kw)
    (out * x["dout"]).sum().backward()
    got = dict(out=out, lse=lse, dq=leaves[0].grad, dk=leaves[1].grad, dv=leaves[2].grad)
    want = row_oracle(x["q"], x["k"], x["v"], x["dout"], p["causal"], p["window_size"],
                      p["softcap"])
    for name in want:
        assert torch.equal(~torch.isfinite(got[name]), ~torch.isfinite(want[name])), name


BAD_VALUES = {  # argument: values that must be refused with TypeError or ValueError
    "softmax_scale": [0.0, -1.0, math.nan, math.inf, "1", True, 1j],
    "causal": [2, -1, None, "yes", 0.0],  # flash-attn's callers pass bools or 0/1
    "window_size": [(-2, 0), (0,), (1, 2, 3), (1.5, 0), (2**63, 0), (0, -2**70), "ab", None,
                    (True, 0), 5],
    "softcap": [-1.0, math.nan, math.inf, "2", None, True],
    "return_lse": [2, None, "no"],
    "return_attn_probs": [2, None, "no"],
    "deterministic": [-1, None],
    "dropout_p": [-0.1, 1.0, math.nan, "0", None, True],
    "backend": ["cuda", "", 3, "NUMBA"],
}


@fuzz(60)
@given(st.sampled_from(sorted(BAD_VALUES)), st.data())
def test_bad_argument_is_refused_by_name(name, data):
    value = data.draw(st.sampled_from(BAD_VALUES[name]))
    q, k, v = (torch.randn(1, 4, 2, 16) for _ in range(3))
    try:
        flash_attn_func(q, k, v, **{name: value})
    except (TypeError, ValueError) as e:
        assert name in str(e), f"{name}={value!r}: message does not name it: {e}"
    else:
        raise AssertionError(f"{name}={value!r} was accepted")


@st.composite
def bad_varlen(draw):
    """A valid varlen call with one argument spoiled."""
    lengths = draw(st.lists(st.integers(0, 6), min_size=1, max_size=3))
    total = sum(lengths)
    cu = cu_seqlens(lengths, "cpu")
    args = dict(cu_seqlens_q=cu, cu_seqlens_k=cu.clone(), max_seqlen_q=max(lengths),
                max_seqlen_k=max(lengths))
    name = draw(st.sampled_from(sorted(args)))
    if name.startswith("cu"):
        spoil = draw(st.sampled_from(["int64", "float", "list", "2d", "first", "last",
                                      "decreasing", "short", "empty"]))
        c = args[name]
        args[name] = {
            "int64": c.long(), "float": c.float(), "list": c.tolist(), "2d": c[None],
            "first": c + 1, "last": torch.cat([c[:-1], c[-1:] + 1]),
            "decreasing": torch.cat([c, c[-1:] - 1]) if total else torch.tensor(
                [0, -1], dtype=torch.int32),
            "short": c[:1], "empty": c[:0]}[spoil]
    else:
        args[name] = draw(st.sampled_from([-1, 1.0 * max(lengths), None, True, "8"]
                                          + ([max(lengths) - 1] if max(lengths) else [])))
    q, k, v = (torch.randn(total, 2, 16) for _ in range(3))
    return name, (q, k, v), args


@fuzz(60)
@given(bad_varlen())
def test_bad_varlen_argument_is_refused_by_name(case):
    name, (q, k, v), args = case
    try:
        flash_attn_varlen_func(q, k, v, **args)
    except (TypeError, ValueError) as e:
        assert name in str(e) or ("cu_seqlens" in name and "cu_seqlens" in str(e)), str(e)
    else:
        raise AssertionError(f"spoiled {name} = {args[name]!r} was accepted")
