"""Attention API behaviour: bad input is refused by name, backends resolve, the reference is
right (checked against torch SDPA), and torch.compile traces the custom ops."""

import pytest
import torch
import torch.nn.functional as F

from attention_helpers import DEVICES, cu_seqlens, rand
from kernelsuite.attention import flash_attn_func, flash_attn_varlen_func, reference


def _dense(dtype=torch.float16, device="cpu", b=1, sq=8, sk=8, hq=2, hkv=2, d=32):
    return (rand(b, sq, hq, d, dtype=dtype, device=device),
            rand(b, sk, hkv, d, dtype=dtype, device=device),
            rand(b, sk, hkv, d, dtype=dtype, device=device))


# ------------------------------------------------------------------ bad input, dense

DENSE_BAD = {
    # name: (change to (q, k, v, kwargs), exception, words the message must contain)
    "q_not_tensor": (lambda q, k, v, kw: (q.tolist(), k, v, kw), TypeError, "q must be a torch.Tensor"),
    "q_3d": (lambda q, k, v, kw: (q[0], k, v, kw), ValueError, "q must be 4-D"),
    "k_dtype": (lambda q, k, v, kw: (q, k.float(), v, kw), TypeError, "k.dtype"),
    "v_dtype": (lambda q, k, v, kw: (q, k, v.float(), kw), TypeError, "v.dtype"),
    "int_dtype": (lambda q, k, v, kw: (q.int(), k.int(), v.int(), kw), TypeError, "q.dtype"),
    "float64_triton": (lambda q, k, v, kw: (q.double(), k.double(), v.double(),
                                            dict(kw, backend="triton")), TypeError, "q.dtype"),
    "kv_shape": (lambda q, k, v, kw: (q, k, v[:, :-1], kw), ValueError, "same shape"),
    "batch": (lambda q, k, v, kw: (q, k[:0], v[:0], kw), ValueError, "batch"),
    "head_dim_zero": (lambda q, k, v, kw: (q[..., :0], k[..., :0], v[..., :0], kw),
                      ValueError, "head_dim"),
    "head_dim_large": (lambda q, k, v, kw: (q.repeat(1, 1, 1, 9), k.repeat(1, 1, 1, 9),
                                            v.repeat(1, 1, 1, 9), kw), ValueError, "head_dim"),
    "k_head_dim": (lambda q, k, v, kw: (q, k[..., :16], v[..., :16], kw), ValueError, "k.shape[-1]"),
    "heads_not_multiple": (lambda q, k, v, kw: (q[:, :, :1], k, v, kw), ValueError, "multiple"),
    "window_negative": (lambda q, k, v, kw: (q, k, v, dict(kw, window_size=(-2, 0))),
                        ValueError, "window_size"),
    "window_length": (lambda q, k, v, kw: (q, k, v, dict(kw, window_size=(1, 2, 3))),
                      ValueError, "window_size"),
    "window_float": (lambda q, k, v, kw: (q, k, v, dict(kw, window_size=(1.5, 0))),
                     ValueError, "window_size"),
    "window_over_int64": (lambda q, k, v, kw: (q, k, v, dict(kw, window_size=(2**63, -1))),
                          ValueError, "window_size"),
    "window_under_int64": (lambda q, k, v, kw: (q, k, v, dict(kw, window_size=(0, -2**64))),
                           ValueError, "window_size"),
    "softcap_negative": (lambda q, k, v, kw: (q, k, v, dict(kw, softcap=-1.0)), ValueError, "softcap"),
    "scale_zero": (lambda q, k, v, kw: (q, k, v, dict(kw, softmax_scale=0.0)), ValueError,
                   "softmax_scale"),
    "scale_nan": (lambda q, k, v, kw: (q, k, v, dict(kw, softmax_scale=float("nan"))),
                  ValueError, "softmax_scale"),
    "causal_not_bool": (lambda q, k, v, kw: (q, k, v, dict(kw, causal=2)), TypeError, "causal"),
    "causal_text": (lambda q, k, v, kw: (q, k, v, dict(kw, causal="yes")), TypeError, "causal"),
    "dropout_range": (lambda q, k, v, kw: (q, k, v, dict(kw, dropout_p=1.0)), ValueError,
                      "dropout_p"),
    "dropout_negative": (lambda q, k, v, kw: (q, k, v, dict(kw, dropout_p=-0.1)), ValueError,
                         "dropout_p"),
    "dropout_text": (lambda q, k, v, kw: (q, k, v, dict(kw, dropout_p="0.1")), ValueError,
                     "dropout_p"),
    "alibi_type": (lambda q, k, v, kw: (q, k, v, dict(kw, alibi_slopes=[1.0, 1.0])),
                   TypeError, "alibi_slopes"),
    "alibi_shape": (lambda q, k, v, kw: (q, k, v, dict(kw, alibi_slopes=torch.ones(3))),
                    ValueError, "alibi_slopes must have shape .2,. or .1, 2."),
    "alibi_batch": (lambda q, k, v, kw: (q, k, v, dict(kw, alibi_slopes=torch.ones(2, 2))),
                    ValueError, "alibi_slopes must have shape"),
    "alibi_int": (lambda q, k, v, kw: (q, k, v, dict(kw, alibi_slopes=torch.ones(2, dtype=int))),
                  TypeError, "alibi_slopes must be a floating-point"),
    "alibi_device": (lambda q, k, v, kw: (q, k, v, dict(kw, alibi_slopes=torch.ones(2, device="meta"))),
                     ValueError, "alibi_slopes is on meta"),
    "sinks_shape": (lambda q, k, v, kw: (q, k, v, dict(kw, sinks=torch.ones(1, 2))),
                    ValueError, "sinks must have shape .2,., got .1, 2."),
    "sinks_type": (lambda q, k, v, kw: (q, k, v, dict(kw, sinks=0.5)), TypeError, "sinks"),
    "backend_name": (lambda q, k, v, kw: (q, k, v, dict(kw, backend="cuda")), ValueError, "backend"),
    "device_mismatch": (lambda q, k, v, kw: (q, k.to("meta"), v.to("meta"), kw), ValueError,
                        "k is on"),
}


@pytest.mark.parametrize("case", DENSE_BAD, ids=str)
def test_dense_bad_input(case):
    change, exc, words = DENSE_BAD[case]
    q, k, v, kw = change(*_dense(), {})
    with pytest.raises(exc, match=words.replace("[", r"\[").replace("]", r"\]")):
        flash_attn_func(q, k, v, **kw)


def test_triton_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend='triton' needs CUDA"):
        flash_attn_func(*_dense(), backend="triton")


# ------------------------------------------------------------------ bad input, varlen


def _varlen_args(lq=(3, 0, 5), lk=(4, 2, 5)):
    q = rand(sum(lq), 2, 32, dtype=torch.float16, device="cpu")
    k = rand(sum(lk), 1, 32, dtype=torch.float16, device="cpu")
    v = rand(sum(lk), 1, 32, dtype=torch.float16, device="cpu")
    return [q, k, v, cu_seqlens(lq, "cpu"), cu_seqlens(lk, "cpu"), max(lq), max(lk)]


def _set(i, value):
    def change(args):
        args = list(args)
        args[i] = value(args[i]) if callable(value) else value
        return args
    return change


VARLEN_BAD = {
    "q_4d": (_set(0, lambda q: q[None]), ValueError, "q must be 3-D"),
    "cu_int64": (_set(3, lambda cu: cu.long()), TypeError, "cu_seqlens_q must be int32"),
    "cu_not_tensor": (_set(4, [0, 4, 6, 11]), TypeError, "cu_seqlens_k must be a torch.Tensor"),
    "cu_2d": (_set(3, lambda cu: cu[None]), ValueError, "cu_seqlens_q must be 1-D"),
    "cu_decreasing": (_set(3, lambda cu: torch.tensor([0, 5, 3, 8], dtype=torch.int32)),
                      ValueError, "non-decreasing"),
    "cu_first_not_zero": (_set(4, lambda cu: cu + 1), ValueError, r"cu_seqlens_k\[0\]"),
    "cu_total": (_set(3, lambda cu: torch.tensor([0, 3, 3, 7], dtype=torch.int32)),
                 ValueError, "number of tokens"),
    "cu_lengths_differ": (_set(4, lambda cu: cu[:-1]), ValueError, "batch \\+ 1"),
    "max_seqlen_short": (_set(5, 4), ValueError, "max_seqlen_q"),
    "max_seqlen_type": (_set(6, 5.0), TypeError, "max_seqlen_k must be an int"),
    "max_seqlen_negative": (_set(6, -1), ValueError, "max_seqlen_k must be >= 0"),
}


@pytest.mark.parametrize("case", VARLEN_BAD, ids=str)
def test_varlen_bad_input(case):
    change, exc, words = VARLEN_BAD[case]
    with pytest.raises(exc, match=words):
        flash_attn_varlen_func(*change(_varlen_args()))


# ------------------------------------------------------------------ backends


def test_auto_on_cpu_is_numba(monkeypatch):
    from kernelsuite.attention import numba_flash

    calls = []
    forward = numba_flash.forward
    monkeypatch.setattr(numba_flash, "forward", lambda *a, **kw: calls.append(1) or forward(*a, **kw))
    q, k, v = _dense(torch.float32)
    torch.testing.assert_close(flash_attn_func(q, k, v, causal=True),
                               reference.flash_attn_func(q, k, v, causal=True))
    assert calls == [1]


@pytest.mark.parametrize("backend", ["torch", "numba", "auto"])
def test_float64_backends(backend):
    q, k, v = _dense(torch.float64)
    out, lse = flash_attn_func(q, k, v, return_lse=True, backend=backend)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64


def test_numba_needs_cpu_tensors():
    q, k, v = (x.to("meta") for x in _dense(torch.float32))
    with pytest.raises(ValueError, match="backend='numba' needs CPU tensors"):
        flash_attn_func(q, k, v, backend="numba")


def test_numba_follows_torch_thread_count():
    """The Numba backend runs on torch.get_num_threads() threads (capped by numba's pool)."""
    import numba

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        flash_attn_func(*_dense(torch.float32), backend="numba")
        assert numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------ the reference itself


@pytest.mark.parametrize("causal", [False, True])
def test_reference_matches_sdpa(causal):
    """The ground truth agrees with torch's own attention (GQA by repeated heads)."""
    q, k, v = _dense(torch.float64, b=2, sq=13, sk=13, hq=4, hkv=2)
    out, lse = reference.flash_attn_func(q, k, v, causal=causal, return_lse=True)
    rep = lambda x: x.transpose(1, 2).repeat_interleave(2, dim=1)  # noqa: E731
    expect = F.scaled_dot_product_attention(q.transpose(1, 2), rep(k), rep(v),
                                            is_causal=causal).transpose(1, 2)
    torch.testing.assert_close(out, expect)
    scores = (q.transpose(1, 2) @ rep(k).mT) * 32 ** -0.5
    if causal:
        scores = scores.masked_fill(torch.ones(13, 13, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(lse, scores.logsumexp(-1))


def test_reference_mask_semantics():
    """flash-attn's: bottom-right causal, window (left, right) around i + sk - sq."""
    m = reference.visible_mask(2, 5, causal=True, window_size=(-1, -1))
    assert m.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    m = reference.visible_mask(3, 3, causal=False, window_size=(1, 0))
    assert m.tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    m = reference.visible_mask(5, 2, causal=True, window_size=(-1, -1))
    assert m.tolist() == [[0, 0], [0, 0], [0, 0], [1, 0], [1, 1]]


def test_reference_row_without_keys_is_zero_with_finite_grads():
    q, k, v = (x.requires_grad_() for x in _dense(torch.float64, sq=6, sk=2))
    out, lse = reference.flash_attn_func(q, k, v, causal=True, return_lse=True)
    assert (out[:, :4] == 0).all() and torch.isinf(lse[..., :4]).all()
    out.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


# ------------------------------------------------------------------ torch.compile


@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("backend", ["triton", "numba"])
def test_compile_fullgraph_matches_eager(backend, varlen):
    """The custom ops trace with no graph break (fullgraph=True), forward and backward,
    with dropout (its random draw is inside the op), ALiBi and sinks."""
    torch._dynamo.reset()
    device = DEVICES[backend]
    if varlen:
        lq, lk = [5, 0, 19], [7, 3, 19]
        q, k, v = (rand(sum(n), 2, 32, dtype=torch.float32, device=device)
                   for n in (lq, lk, lk))
        extra = (cu_seqlens(lq, device), cu_seqlens(lk, device), 19, 19)
        attn = flash_attn_varlen_func
    else:
        q, k, v = _dense(torch.float32, device, b=2, sq=19, sk=23, hq=4, hkv=2)
        extra = ()
        attn = flash_attn_func

    features = dict(dropout_p=0.25, alibi_slopes=torch.rand(q.shape[-2], device=device),
                    sinks=torch.randn(q.shape[-2], device=device))

    def step(q, k, v):
        out, lse = attn(q, k, v, *extra, causal=True, return_lse=True, backend=backend,
                        **features)
        return (out * 2).sum() + lse.clamp_min(-1e4).sum()

    results = []
    for fn in (step, torch.compile(step, fullgraph=True, backend="aot_eager")):
        leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
        torch.manual_seed(0)
        loss = fn(*leaves)
        loss.backward()
        results.append([loss.detach()] + [x.grad for x in leaves])
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager)


@pytest.mark.parametrize("backend", ["triton", "numba"])
def test_compile_inductor(backend):
    """Inductor fuses the ops around the custom op; the result matches eager."""
    torch._dynamo.reset()
    q, k, v = _dense(torch.float32, DEVICES[backend], sq=17, sk=17)

    def f(q, k, v):
        return flash_attn_func(q * 0.5, k, v, causal=True, backend=backend).relu()

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(q, k, v), f(q, k, v))


# ------------------------------------------------------------------ unlucky but valid input

BACKENDS = ["torch", "numba", "triton"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("window", [(2**63 - 1, 2**63 - 1), (2**63 - 1, 0), (8, 2**40)])
def test_huge_windows_are_unbounded(backend, window):
    """Any window side that reaches past the sequence is the same as -1 (it used to zero the
    output at 2**63 - 1: the index arithmetic overflowed)."""
    q, k, v = (x.float().to(DEVICES.get(backend, "cpu")) for x in _dense())
    unbounded = tuple(-1 if w >= 8 else w for w in window)
    want = flash_attn_func(q, k, v, window_size=unbounded, backend="torch")
    got = flash_attn_func(q, k, v, window_size=window, backend=backend)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    direct = reference.flash_attn_func(q, k, v, window_size=window)  # the reference alone
    torch.testing.assert_close(direct, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_cu_seqlens(backend):
    """A strided view of cu_seqlens is read by value, not as raw memory (Triton read the
    storage behind the view: garbage bounds, out-of-bounds reads)."""
    device = DEVICES.get(backend, "cpu")
    q, k, v, cu_q, cu_k, mq, mk = _varlen_args()
    q, k, v = (x.float().to(device) for x in (q, k, v))
    want = flash_attn_varlen_func(q, k, v, cu_q.to(device), cu_k.to(device), mq, mk,
                                  backend="torch")
    strided = []
    for cu in (cu_q, cu_k):  # made on the device: .to() of a view copies it contiguous
        view = torch.full((2 * cu.numel(),), 10**6, dtype=torch.int32, device=device)[::2]
        view.copy_(cu)
        strided.append(view)
    assert not any(cu.is_contiguous() for cu in strided)
    got = flash_attn_varlen_func(q, k, v, *strided, mq, mk, backend=backend)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loose_max_seqlen_costs_nothing(backend):
    """max_seqlen far above the real lengths (flash-attn only needs an upper bound): the
    Triton grid used to grow with it (2**40 hung; 100000 for 3-token sequences took 29 s
    under the interpreter). Now the work is bounded by the real lengths."""
    device = DEVICES.get(backend, "cpu")
    q, k, v, cu_q, cu_k, mq, mk = _varlen_args()
    q, k, v = (x.float().to(device) for x in (q, k, v))
    cu_q, cu_k = cu_q.to(device), cu_k.to(device)
    want = flash_attn_varlen_func(q, k, v, cu_q, cu_k, mq, mk, backend="torch")
    calls = []
    if backend == "triton":  # the grid the kernel is launched on
        from kernelsuite.attention import triton_flash

        real = triton_flash._Launch.__init__

        def spy(self, *args):
            real(self, *args)
            calls.append((self.max_seqlen_q, self.max_seqlen_k))
        triton_flash._Launch.__init__ = spy
    try:
        got = flash_attn_varlen_func(q, k, v, cu_q, cu_k, 2**40, 2**62, backend=backend)
    finally:
        if backend == "triton":
            triton_flash._Launch.__init__ = real
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if backend == "triton":
        assert calls == [(mq, mk)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_query_heads(backend):
    """heads_q = 0 (allowed: 0 is a multiple of heads_kv): empty out and lse, zero dk/dv, on
    every backend (Numba raised an internal reshape error)."""
    device = DEVICES.get(backend, "cpu")
    q = torch.randn(1, 8, 0, 16, device=device, requires_grad=True)
    k, v = (torch.randn(1, 8, 1, 16, device=device, requires_grad=True) for _ in range(2))
    out, lse = flash_attn_func(q, k, v, return_lse=True, backend=backend)
    assert out.shape == (1, 8, 0, 16) and lse.shape == (1, 0, 8)
    out.sum().backward()
    assert k.grad.abs().sum() == 0 and v.grad.abs().sum() == 0
