"""A NaN or Inf in q, k, v or dout reaches exactly the outputs that depend on it.

The oracle is independent of every backend: each query row is attended on its own, in
float64, over the keys it can see and nothing else (autograd for the gradients). Its
non-finite pattern is what IEEE arithmetic gives; torch SDPA gives the same for q and k
(for v it spreads a NaN to rows that cannot see the key: 0 * NaN in its p @ v).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from attention_helpers import DEVICES, cu_seqlens, row_oracle
from kernelsuite.attention import flash_attn_func, flash_attn_varlen_func

BACKENDS = ["numba", "torch", "triton"]
LENGTHS = [5, 0, 9]  # varlen: an empty sequence between two others
SEQ, HEADS, D = 9, 2, 16


def _run(fn, q, k, v, dout):
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    out, lse = fn(*leaves)
    (out.double() * dout.double()).sum().backward()
    return dict(out=out, lse=lse, dq=leaves[0].grad, dk=leaves[1].grad, dv=leaves[2].grad)


def _poison(x, value, at):
    x = x.clone()
    x[at] = value
    return x


def _inputs(where, value, device, heads_kv=HEADS):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, SEQ, HEADS, D, generator=g)
    k, v = (torch.randn(1, SEQ, heads_kv, D, generator=g) for _ in range(2))
    dout = torch.randn(1, SEQ, HEADS, D, generator=g)
    x = dict(q=q, k=k, v=v, dout=dout)
    # row / key 4: visible to some rows and hidden from others under every mask below
    x[where] = _poison(x[where], value, (0, 4, 0, 3))
    return [x[n].to(device) for n in ("q", "k", "v", "dout")]


def _check_pattern(got, want, backend, masked):
    """The same non-finite elements. Triton forms whole tiles with tl.dot, so on a masked
    edge tile a NaN can also reach rows of that tile that cannot see it (as in flash-attn);
    there it must still reach every element the oracle says (a NaN is never lost)."""
    for name in want:
        g, w = (~torch.isfinite(t.detach().cpu()) for t in (got[name], want[name]))
        if backend == "triton" and masked:
            assert not (w & ~g).any(), f"{name}: a non-finite value was lost"
        else:
            assert torch.equal(g, w), f"{name}: non-finite pattern differs"


MASKS = [(False, (-1, -1)), (True, (-1, -1)), (False, (2, 1))]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=str)
@pytest.mark.parametrize("where", ["q", "k", "v", "dout"])
@pytest.mark.parametrize("causal,window", MASKS, ids=["full", "causal", "window"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_dense(backend, causal, window, where, value):
    device = DEVICES.get(backend, "cpu")
    q, k, v, dout = _inputs(where, value, device)
    got = _run(lambda *a: flash_attn_func(*a, causal=causal, window_size=window,
                                          return_lse=True, backend=backend), q, k, v, dout)
    want = row_oracle(q.cpu(), k.cpu(), v.cpu(), dout.cpu(), causal, window)
    _check_pattern(got, want, backend, causal or window != (-1, -1))
    for name in got:  # and the finite values are right
        ok = torch.isfinite(want[name]) & torch.isfinite(got[name].detach().cpu())
        torch.testing.assert_close(got[name].detach().cpu().double()[ok], want[name][ok],
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_matches_sdpa_for_q_and_k(backend, where):
    """Where SDPA is exact (no mask, so no 0 * NaN), its non-finite pattern is ours."""
    device = DEVICES.get(backend, "cpu")
    q, k, v, _ = _inputs(where, math.nan, device)
    out = flash_attn_func(q, k, v, backend=backend)
    # the math backend: torch's CPU flash kernel turns a NaN row of q into finite values
    with sdpa_kernel(SDPBackend.MATH):
        sdpa = torch.nn.functional.scaled_dot_product_attention(
            *(x.cpu().transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    assert torch.equal(~torch.isfinite(out.cpu()), ~torch.isfinite(sdpa))


@pytest.mark.parametrize("where", ["q", "k", "v", "dout"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_varlen(backend, where):
    """Packed sequences: a NaN stays inside its own sequence, and within it reaches only the
    rows that see it; the empty sequence stays empty."""
    device = DEVICES.get(backend, "cpu")
    total = sum(LENGTHS)
    g = torch.Generator().manual_seed(1)
    x = {n: torch.randn(total, HEADS, D, generator=g) for n in ("q", "k", "v", "dout")}
    x[where] = _poison(x[where], math.nan, (2, 1, 5))  # token 2 of the first sequence
    q, k, v, dout = (x[n].to(device) for n in ("q", "k", "v", "dout"))
    cu = cu_seqlens(LENGTHS, device)
    got = _run(lambda *a: flash_attn_varlen_func(*a, cu, cu, max(LENGTHS), max(LENGTHS),
                                                 causal=True, return_lse=True,
                                                 backend=backend), q, k, v, dout)
    want = {n: [] for n in ("out", "lse", "dq", "dk", "dv")}
    start = 0
    for n in LENGTHS:
        part = row_oracle(*(x[m][None, start:start + n] for m in ("q", "k", "v", "dout")),
                       True, (-1, -1))
        for name in ("out", "dq", "dk", "dv"):
            want[name].append(part[name][0])
        want["lse"].append(part["lse"][0])
        start += n
    want = {name: torch.cat(parts, dim=-1 if name == "lse" else 0)
            for name, parts in want.items()}
    _check_pattern(got, want, backend, True)


@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_that_see_no_key_stay_zero_beside_a_nan(backend, where):
    """seqlen_q > seqlen_k, causal: the first rows see no key and return 0 (lse -inf, zero
    gradients) even when every key the other rows see holds a NaN (the reference used to
    spread v's NaN to them through 0 * NaN)."""
    device = DEVICES.get(backend, "cpu")
    g = torch.Generator().manual_seed(2)
    q, dout = (torch.randn(1, SEQ, HEADS, D, generator=g) for _ in range(2))
    k, v = (torch.randn(1, 4, HEADS, D, generator=g) for _ in range(2))
    x = dict(q=q, k=k, v=v)
    x[where] = _poison(x[where], math.nan, (0, 0 if where != "q" else SEQ - 1, 0, 3))
    q, k, v, dout = (t.to(device) for t in (x["q"], x["k"], x["v"], dout))
    got = _run(lambda *a: flash_attn_func(*a, causal=True, return_lse=True,
                                          backend=backend), q, k, v, dout)
    want = row_oracle(q.cpu(), k.cpu(), v.cpu(), dout.cpu(), True, (-1, -1))
    blind = SEQ - 4  # rows 0..4 see no key
    assert torch.isneginf(want["lse"][..., :blind]).all() and (want["out"][:, :blind] == 0).all()
    _check_pattern(got, want, backend, True)
    if backend != "triton":  # whole tiles: see _check_pattern
        assert (got["out"][:, :blind] == 0).all() and (got["dq"][:, :blind] == 0).all()
        assert torch.isneginf(got["lse"][..., :blind]).all()
