"""Dropout, ALiBi and attention sinks: each kernel against the float64 reference (the
DESIGN.md check, forward and backward), the reference against independent formulations,
and dropout's random stream: the same bits in every backend, reproducible under a seed,
advancing per call, with the keep rate and the expectation it promises."""

import math
import os

import pytest
import torch

from attention_helpers import DEVICES, check_attention, cu_seqlens, rand
from kernelsuite.attention import _dropout, flash_attn_func, flash_attn_varlen_func, reference

# (backend, dtype): the Triton interpreter gets bfloat16 dots wrong (bfloat16 is GPU-only)
BACKEND_DTYPES = [
    pytest.param("triton", torch.float32, id="triton-float32"),
    pytest.param("triton", torch.float16, id="triton-float16"),
    pytest.param("triton", torch.bfloat16, id="triton-bfloat16", marks=pytest.mark.gpu),
    pytest.param("numba", torch.float32, id="numba-float32"),
    pytest.param("numba", torch.bfloat16, id="numba-bfloat16"),
    pytest.param("numba", torch.float64, id="numba-float64"),
]
BACKENDS = ["triton", "numba"]

# (batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, options); alibi "heads" gives
# slopes (heads_q,), "batch" (batch, heads_q); sinks=True one logit per head
DENSE_CASES = {
    "alibi_causal": (1, 37, 45, 4, 2, 32, dict(causal=True, alibi="heads")),
    "alibi_distance_q_longer": (2, 50, 20, 2, 2, 32, dict(alibi="batch")),
    "alibi_window_softcap": (2, 33, 40, 2, 1, 24, dict(window_size=(6, 3), softcap=4.0,
                                                         alibi="heads")),
    "dropout": (2, 37, 45, 4, 2, 32, dict(dropout_p=0.17)),
    "dropout_causal_alibi": (1, 40, 40, 2, 1, 32, dict(dropout_p=0.5, causal=True,
                                                         alibi="batch")),
    "dropout_many_blocks": (1, 150, 131, 2, 1, 64, dict(dropout_p=0.3, causal=True)),
    "sinks": (1, 37, 45, 4, 2, 32, dict(sinks=True, causal=True)),
    "sinks_window_dropout": (2, 30, 30, 2, 2, 16, dict(sinks=True, window_size=(7, 0),
                                                        dropout_p=0.2, alibi="heads")),
}


def _options(opts, batch, heads, device):
    """The case's options as call arguments: slopes and sinks made on device."""
    kw = dict(opts)
    alibi = kw.pop("alibi", None)
    if alibi:
        shape = (heads,) if alibi == "heads" else (batch, heads)
        kw["alibi_slopes"] = (torch.rand(shape) * 0.4 + 0.05).to(device)
    if kw.pop("sinks", False):
        kw["sinks"] = torch.randn(heads).to(device)
    return kw


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("case", DENSE_CASES, ids=str)
def test_dense(case, backend, dtype):
    batch, sq, sk, hq, hkv, d, opts = DENSE_CASES[case]
    device = DEVICES[backend]
    q, k, v = (rand(batch, n, h, d, dtype=dtype, device=device)
               for n, h in ((sq, hq), (sk, hkv), (sk, hkv)))
    # the LSE's gradient too: the ALiBi form and the sinks change the LSE, not only out
    check_attention(q, k, v, backend=backend, lse_grad=True,
                    **_options(opts, batch, hq, device))


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("opts", [dict(alibi="batch", causal=True, dropout_p=0.25),
                                  dict(alibi="heads", window_size=(4, 4), sinks=True)],
                         ids=["alibi_dropout_causal", "alibi_window_sinks"])
def test_varlen(opts, backend, dtype):
    lengths_q, lengths_k = (5, 0, 33, 17), (9, 4, 33, 12)
    device = DEVICES[backend]
    q = rand(sum(lengths_q), 4, 32, dtype=dtype, device=device)
    k, v = (rand(sum(lengths_k), 2, 32, dtype=dtype, device=device) for _ in range(2))
    varlen = (cu_seqlens(lengths_q, device), cu_seqlens(lengths_k, device), 33, 33)
    check_attention(q, k, v, backend=backend, varlen=varlen, lse_grad=True,
                    **_options(opts, len(lengths_q), 4, device))


# ----------------------------------------------------------------------------- dropout


def test_philox_is_tritons():
    """The torch Philox (the reference's) gives tl.philox's four words, and the Numba
    kernels' keep bit is the reference's keep_mask."""
    from kernelsuite.attention import numba_flash

    i = torch.arange(256)
    cols, rows, heads = i * 977 % 4099, i * 7 + 2**31 - 100, i % 5  # rows past int32 too
    for seed, offset in ((0, 0), (12345678901234567, 17), (2**63 - 5, 2**31 - 1)):
        want = _triton_philox(seed, cols, rows, heads, offset)
        got = _dropout.philox(seed, cols, rows, heads, offset)
        assert all(torch.equal(g, w) for g, w in zip(got, want))
        kept = _dropout.keep_mask(seed, offset, 0.4, heads, rows, cols)
        thr = _dropout.threshold(0.4)
        assert kept.tolist() == [numba_flash._kept(seed, c, r, h, offset, thr) for c, r, h
                                 in zip(cols.tolist(), rows.tolist(), heads.tolist())]
        # word col % 4 of the call at col // 4
        words = _dropout.philox(seed, cols // 4, rows, heads, offset)
        lane = torch.stack(words)[cols % 4, i]
        assert torch.equal(kept, (lane >> 1) >= thr)


def _triton_philox(seed, c0, c1, c2, c3):
    """Triton's own tl.philox (its four words, as int64 in [0, 2**32)), on the GPU or, when
    the tests interpret Triton, on the CPU."""
    import triton
    import triton.language as tl

    @triton.jit
    def kernel(OUT, C0, C1, C2, seed, c3, N: tl.constexpr):
        i = tl.arange(0, N)
        w0, w1, w2, w3 = tl.philox(seed, tl.load(C0 + i), tl.load(C1 + i), tl.load(C2 + i),
                                   c3 + 0 * i)
        tl.store(OUT + i, w0.to(tl.int32, bitcast=True))
        tl.store(OUT + N + i, w1.to(tl.int32, bitcast=True))
        tl.store(OUT + 2 * N + i, w2.to(tl.int32, bitcast=True))
        tl.store(OUT + 3 * N + i, w3.to(tl.int32, bitcast=True))

    device = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
    c0, c1, c2 = ((c & 0xFFFFFFFF).to(torch.int64).to(torch.int32) for c in (c0, c1, c2))
    out = torch.empty(4, c0.numel(), dtype=torch.int32, device=device)
    kernel[(1,)](out, c0.to(device), c1.to(device), c2.to(device), seed, c3, N=c0.numel())
    return tuple(out.cpu().to(torch.int64) & 0xFFFFFFFF)


@pytest.mark.parametrize("backend", BACKENDS + ["torch"])
def test_dropout_reproducible_and_advancing(backend):
    """One seed, one mask (outputs and gradients bitwise); the next call a new mask; and
    the call moves torch's generator on, as flash-attn's does."""
    device = DEVICES.get(backend, "cpu")
    q, k, v = (rand(1, 24, 2, 16, dtype=torch.float32, device=device).requires_grad_()
               for _ in range(3))

    def call():
        out = flash_attn_func(q, k, v, 0.3, causal=True, backend=backend)
        return (out, *torch.autograd.grad(out.square().sum(), (q, k, v)))

    torch.manual_seed(11)
    first, second = call(), call()
    torch.manual_seed(11)
    again = call()
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], second[0])
    torch.manual_seed(11)
    untouched = torch.rand(4, device=device)
    torch.manual_seed(11)
    call()
    assert not torch.equal(torch.rand(4, device=device), untouched)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("varlen", [False, True])
def test_s_dmask_rebuilds_the_output(backend, varlen):
    """flash-attn's S_dmask encoding: |S| = exp(score - row max), negative where dropped.
    The output rebuilt from it alone (and v) is the kernel's output."""
    device, p = DEVICES[backend], 0.4
    q, k, v = (rand(2, 20, 2, 16, dtype=torch.float32, device=device) for _ in range(3))
    kw = dict(causal=True, alibi_slopes=torch.tensor([0.2, 0.5], device=device),
              return_attn_probs=True, backend=backend)
    if varlen:
        cu = cu_seqlens((20, 20), device)
        out, lse, s = flash_attn_varlen_func(*(t.flatten(0, 1) for t in (q, k, v)), cu, cu,
                                             20, 20, p, **kw)
        out, lse = out.view(q.shape), lse.view(2, 20, 2).permute(1, 2, 0)
    else:
        out, lse, s = flash_attn_func(q, k, v, p, **kw)
    assert s.shape == (2, 2, 20, 20) and s.dtype == torch.float32
    assert not torch.any(s.triu(1))  # causal: nothing above the diagonal
    probs = s.abs() / s.abs().sum(-1, keepdim=True)
    kept = torch.where(s > 0, probs / (1 - p), 0)
    torch.testing.assert_close(out, torch.einsum("bhij,bjhd->bihd", kept, v), rtol=1e-5,
                               atol=1e-5)
    dropped = ((s < 0).sum() / (s != 0).sum()).item()
    assert 0.3 < dropped < 0.5


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keep_rate(p):
    """The fraction kept over 2**18 entries is 1 - p within 5 standard deviations."""
    n = 2**18
    i = torch.arange(n)
    kept = _dropout.keep_mask(987654321, 3, p, i % 4, i // 4 % 256, i // 1024)
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(kept.double().mean().item() - (1 - p)) < 5 * sigma


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_dropout_is_unbiased(backend):
    """Scaling the kept probabilities by 1 / (1 - p) keeps the expected output: the mean
    of 400 dropout calls is the output without dropout, within 5 standard errors."""
    q, k, v = (rand(1, 16, 1, 16, dtype=torch.float64, device="cpu") for _ in range(3))
    want = flash_attn_func(q, k, v, causal=True, backend=backend)
    torch.manual_seed(5)
    outs = torch.stack([flash_attn_func(q, k, v, 0.3, causal=True, backend=backend)
                        for _ in range(400)])
    err = (outs.mean(0) - want).abs()
    stderr = outs.std(0) / math.sqrt(len(outs))
    assert torch.all(err <= 5 * stderr + 1e-12)
    assert torch.all(outs.std(0)[:, :, 1:] > 0)  # rows seeing 2+ keys do vary


# ----------------------------------------------------------------------------- ALiBi, sinks


@pytest.mark.parametrize("causal", [True, False])
def test_reference_alibi_is_sdpa_with_the_bias(causal):
    """The reference's ALiBi against torch's SDPA given the bias as a float mask (out), and
    the LSE written out as logsumexp (the form: + slope * col when causal)."""
    q = rand(2, 9, 3, 8, dtype=torch.float64, device="cpu")
    k, v = (rand(2, 12, 3, 8, dtype=torch.float64, device="cpu") for _ in range(2))
    slopes = torch.tensor([[0.1, 0.5, 1.0], [0.25, 0.0, 2.0]], dtype=torch.float64)
    out, lse = reference.flash_attn_func(q, k, v, causal=causal, alibi_slopes=slopes,
                                         return_lse=True)
    i, j = torch.arange(9)[:, None] + 3, torch.arange(12)[None]
    bias = slopes[..., None, None] * (j if causal else -(i - j).abs())
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(8) + bias
    if causal:
        bias = bias.masked_fill(j > i, -math.inf)
        scores = scores.masked_fill(j > i, -math.inf)
    want = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias)
    torch.testing.assert_close(out, want.transpose(1, 2))
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1))


def test_reference_sinks_are_gpt_oss_eager():
    """Sinks as gpt-oss's eager attention has them: a logit column concatenated to the
    scores, softmax, the column dropped. Outputs and gradients (the sinks' too)."""
    q, k, v = (rand(1, 7, 4, 8, dtype=torch.float64, device="cpu").requires_grad_()
               for _ in range(3))
    sinks = torch.randn(4, dtype=torch.float64, requires_grad=True)
    out = reference.flash_attn_func(q, k, v, causal=True, sinks=sinks)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(7, 7, dtype=torch.bool).triu(1), -math.inf)
    logits = torch.cat([scores, sinks[None, :, None, None].expand(1, 4, 7, 1)], -1)
    probs = torch.softmax(logits, -1)[..., :-1]
    want = torch.einsum("bhij,bjhd->bihd", probs, v)
    torch.testing.assert_close(out, want)
    dout = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v, sinks), dout)
    for g, w in zip(got, torch.autograd.grad(want, (q, k, v, sinks), dout)):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("varlen", [False, True])
def test_sinks_gradient(backend, varlen):
    """The sinks' gradient through the kernels' (out, lse) matches the float64 reference."""
    device = DEVICES[backend]
    q, k, v = (rand(2, 19, 4, 16, dtype=torch.float32, device=device) for _ in range(3))
    sinks = torch.randn(4, device=device)
    dout = torch.randn(q.shape, device=device)
    grads = []
    for impl, dtype in ((backend, torch.float32), ("torch", torch.float64)):
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v, sinks)]
        a, b, c, s = leaves
        if varlen:
            cu = cu_seqlens((19, 19), device)
            out = flash_attn_varlen_func(a.flatten(0, 1), b.flatten(0, 1), c.flatten(0, 1),
                                         cu, cu, 19, 19, causal=True, sinks=s, backend=impl)
            out = out.view(a.shape)
        else:
            out = flash_attn_func(a, b, c, causal=True, sinks=s, backend=impl)
        grads.append(torch.autograd.grad(out, leaves, dout.to(dtype)))
    for got, want in zip(*grads):
        torch.testing.assert_close(got.double(), want, rtol=2e-4, atol=2e-5)
