"""Numerical sanity of the attention kernels against the float64 reference (DESIGN.md).

Every test runs for both kernel backends. Triton: without a GPU its kernels run under
TRITON_INTERPRET=1 on CPU tensors in float32 and float16 (the interpreter gets bfloat16 dots
wrong, so bfloat16 is `gpu`). Numba: CPU tensors in float32, float16, bfloat16 and float64.
"""

import pytest
import torch

from attention_helpers import DEVICES, check_attention, cu_seqlens, rand, run
from kernelsuite.attention import numba_flash, triton_flash

KERNELS = {"triton": triton_flash, "numba": numba_flash}
GPU_ONLY = pytest.mark.gpu
# (backend, dtype) pairs every numerics test runs
BACKEND_DTYPES = [
    pytest.param("triton", torch.float32, id="triton-float32"),
    pytest.param("triton", torch.float16, id="triton-float16"),
    pytest.param("triton", torch.bfloat16, id="triton-bfloat16", marks=GPU_ONLY),
    pytest.param("numba", torch.float32, id="numba-float32"),
    pytest.param("numba", torch.float16, id="numba-float16"),
    pytest.param("numba", torch.bfloat16, id="numba-bfloat16"),
    pytest.param("numba", torch.float64, id="numba-float64"),
]
BACKEND_NAMES = [pytest.param(name, id=name) for name in KERNELS]
FP32_FP16 = [p for p in BACKEND_DTYPES if p.values[1] in (torch.float32, torch.float16)]


# (batch, seqlen_q, seqlen_k, heads_q, heads_kv, head_dim, options)
DENSE_CASES = {
    "len1": (2, 1, 1, 2, 2, 16, {}),
    "gqa_odd_lengths": (1, 37, 45, 4, 2, 40, {}),
    "mqa_causal": (1, 48, 48, 4, 1, 64, dict(causal=True)),
    "causal_q_longer": (1, 50, 20, 2, 2, 32, dict(causal=True)),  # first rows see no key
    "causal_k_longer": (2, 20, 51, 2, 1, 32, dict(causal=True)),
    "window": (1, 45, 45, 2, 2, 32, dict(window_size=(5, 3))),
    "window_causal": (1, 40, 57, 2, 2, 24, dict(window_size=(8, -1), causal=True)),
    "window_right_only": (1, 33, 33, 2, 2, 16, dict(window_size=(-1, 4))),
    "window_sees_nothing": (1, 40, 8, 2, 2, 16, dict(window_size=(2, 0))),
    "softcap": (1, 29, 35, 4, 2, 32, dict(softcap=5.0)),
    "softcap_causal_scale": (1, 33, 33, 2, 2, 48, dict(softcap=2.0, causal=True,
                                                         softmax_scale=0.3)),
    "head_dim_136": (1, 17, 23, 2, 1, 136, {}),
    "head_dim_256": (1, 19, 19, 1, 1, 256, dict(causal=True)),
    # several blocks of every kernel (Numba's are 64 x 64): full, edge and skipped blocks
    "many_blocks_causal": (1, 150, 131, 2, 1, 64, dict(causal=True)),
    "many_blocks_window": (2, 130, 130, 2, 2, 32, dict(window_size=(70, 10))),
}


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("case", DENSE_CASES, ids=str)
def test_dense(case, backend, dtype):
    batch, sq, sk, hq, hkv, d, opts = DENSE_CASES[case]
    device = DEVICES[backend]
    q = rand(batch, sq, hq, d, dtype=dtype, device=device)
    k = rand(batch, sk, hkv, d, dtype=dtype, device=device)
    v = rand(batch, sk, hkv, d, dtype=dtype, device=device)
    check_attention(q, k, v, backend=backend, **opts)


VARLEN_CASES = {
    # lengths of q and k per sequence: empty sequences, k empty with q not, uneven, length 1
    "uneven": ([5, 0, 33, 17, 1], [7, 3, 0, 40, 1], {}),
    "causal": ([5, 0, 33, 17, 1], [7, 3, 0, 40, 1], dict(causal=True)),
    "same_lengths_window": ([31, 2, 18], [31, 2, 18], dict(window_size=(4, 4))),
    "softcap_gqa": ([12, 40], [30, 9], dict(softcap=3.0, causal=True)),
    "many_blocks": ([70, 0, 129], [140, 65, 100], dict(causal=True)),
}


@pytest.mark.parametrize("backend,dtype", BACKEND_DTYPES)
@pytest.mark.parametrize("case", VARLEN_CASES, ids=str)
def test_varlen(case, backend, dtype):
    lq, lk, opts = VARLEN_CASES[case]
    hq, hkv, d = 4, 2, 32
    device = DEVICES[backend]
    q = rand(sum(lq), hq, d, dtype=dtype, device=device)
    k = rand(sum(lk), hkv, d, dtype=dtype, device=device)
    v = rand(sum(lk), hkv, d, dtype=dtype, device=device)
    varlen = (cu_seqlens(lq, device), cu_seqlens(lk, device), max(lq), max(lk))
    check_attention(q, k, v, backend=backend, varlen=varlen, **opts)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_lse_gradient(backend, varlen, deterministic):
    """A loss that uses the returned LSE gets its gradient too (not silently dropped)."""
    device = DEVICES[backend]
    if varlen:
        lq, lk = [9, 0, 20], [13, 4, 20]
        q, k, v = (rand(sum(n), 2, 32, dtype=torch.float32, device=device)
                   for n in (lq, lk, lk))
        check_attention(q, k, v, backend=backend, causal=True, lse_grad=True,
                        deterministic=deterministic,
                        varlen=(cu_seqlens(lq, device), cu_seqlens(lk, device), 20, 20))
    else:
        q = rand(2, 21, 4, 32, dtype=torch.float32, device=device)
        k, v = (rand(2, 27, 2, 32, dtype=torch.float32, device=device) for _ in range(2))
        check_attention(q, k, v, backend=backend, causal=True, lse_grad=True,
                        deterministic=deterministic)


@pytest.mark.parametrize("backend,dtype", FP32_FP16)
def test_deterministic_backward(backend, dtype):
    """deterministic=True: the same inputs give bitwise the same gradients (Numba's backward
    always is; so is its forward)."""
    device = DEVICES[backend]
    q = rand(1, 100, 4, 32, dtype=dtype, device=device)
    k, v = (rand(1, 100, 1, 32, dtype=dtype, device=device) for _ in range(2))
    check_attention(q, k, v, backend=backend, causal=True, deterministic=True)
    dout = torch.randn(q.shape, device=device).to(dtype)
    got = run(q, k, v, dout, None, backend, causal=True, deterministic=True)
    again = run(q, k, v, dout, None, backend, causal=True, deterministic=True)
    for name in ("out", "lse", "dq", "dk", "dv"):
        assert torch.equal(got[name], again[name]), name


LAYOUTS = {
    # q, k, v sliced out of one packed (batch, seqlen, 3, heads, d) projection
    "packed_qkv": lambda x: torch.stack([x, x, x], dim=2)[:, :, 1],
    # (batch, heads, seqlen, d) memory seen as (batch, seqlen, heads, d)
    "heads_major": lambda x: x.transpose(1, 2).contiguous().transpose(1, 2),
    # last dim not unit-stride
    "strided_last": lambda x: torch.stack([x, x], dim=-1)[..., 0],
}


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_non_contiguous_inputs(backend, layout):
    device = DEVICES[backend]
    q = rand(2, 19, 4, 32, dtype=torch.float16, device=device)
    k, v = (rand(2, 23, 2, 32, dtype=torch.float16, device=device) for _ in range(2))
    make = LAYOUTS[layout]
    assert not make(q).is_contiguous()
    check_attention(q, k, v, backend=backend, causal=True, make_input=make)


@pytest.mark.parametrize("backend,dtype", FP32_FP16)
def test_large_magnitudes(backend, dtype):
    """Scores in the thousands: the online softmax must neither overflow nor lose accuracy
    beyond what a float32 LSE allows (about ulp(|score|), as in flash-attn)."""
    device = DEVICES[backend]
    scale = 60.0 if dtype == torch.float32 else 12.0  # fp16: its reference must stay finite
    q = rand(1, 33, 2, 32, dtype=dtype, device=device, scale=scale)
    k = rand(1, 33, 2, 32, dtype=dtype, device=device, scale=scale)
    v = rand(1, 33, 2, 32, dtype=dtype, device=device)
    max_score = (q.double().transpose(1, 2) @ k.double().transpose(1, 2).mT).abs().max().item()
    assert max_score * 32 ** -0.5 > (1000 if dtype == torch.float32 else 100)
    ulp = torch.finfo(torch.float32).eps * max_score * 32 ** -0.5

    def floor(name, truth):  # the LSE is off by about ulp; the rest by ulp relative
        return 8 * ulp * (1.0 if name == "lse" else max(1.0, truth.abs().max().item()))

    # the float16 floor already exceeds this rounding
    check_attention(q, k, v, backend=backend, causal=True,
                    floor=floor if dtype == torch.float32 else None)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("varlen", [False, True])
@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_every_output_element_written(backend, varlen, deterministic):
    """Outputs start as NaN; afterwards every element must hold a number (or -inf LSE
    exactly where a row sees no key)."""
    device, kernels = DEVICES[backend], KERNELS[backend]
    hq, hkv, d = 2, 1, 24
    if varlen:
        lq, lk = [7, 0, 30, 3], [0, 5, 30, 9]
        q, k, v = (rand(sum(n), h, d, dtype=torch.float16, device=device)
                   for n, h in ((lq, hq), (lk, hkv), (lk, hkv)))
        cu = (cu_seqlens(lq, device), cu_seqlens(lk, device))
        lse_shape, maxes = (hq, sum(lq)), (max(lq), max(lk))
    else:
        q = rand(2, 37, hq, d, dtype=torch.float16, device=device)
        k, v = (rand(2, 18, hkv, d, dtype=torch.float16, device=device) for _ in range(2))
        cu, lse_shape, maxes = (None, None), (2, hq, 37), (0, 0)
    nan = float("nan")
    out = torch.full_like(q, nan)
    lse = torch.full(lse_shape, nan, device=device)
    args = (*cu, *maxes, d ** -0.5, -1, 0, 0.0)  # causal
    kernels.forward(q, k, v, *args, out=out, lse=lse)
    assert not out.isnan().any() and not lse.isnan().any()
    assert torch.isinf(lse).any(), "this case has rows that see no key"
    assert (out[(lse == float("-inf")).transpose(-1, -2)] == 0).all()
    grads = [torch.full_like(x, nan) for x in (q, k, v)]
    dout = torch.randn_like(q)
    kernels.backward(dout, None, q, k, v, out, lse, *args, deterministic, dq=grads[0],
                     dk=grads[1], dv=grads[2])
    for name, g in zip(("dq", "dk", "dv"), grads):
        assert torch.isfinite(g).all(), name


@pytest.mark.parametrize("backend,dtype", [
    pytest.param("triton", torch.float16, id="triton-float16", marks=GPU_ONLY),
    pytest.param("triton", torch.bfloat16, id="triton-bfloat16", marks=GPU_ONLY),
    pytest.param("numba", torch.float32, id="numba-float32"),
    pytest.param("numba", torch.bfloat16, id="numba-bfloat16")])
@pytest.mark.parametrize("head_dim,causal,seqlen", [(64, True, 2048), (128, False, 1024),
                                                    (128, True, 4096), (256, True, 1024)])
def test_real_size(backend, dtype, head_dim, causal, seqlen):
    """Benchmark-sized shapes: many blocks, every autotuned config path. On CPU (Numba) the
    float64 truth is the slow part, so the CPU shapes are a quarter of the length."""
    device = DEVICES[backend]
    batch = 2
    if device == "cpu":
        batch, seqlen = 1, seqlen // 4
    q = rand(batch, seqlen, 8, head_dim, dtype=dtype, device=device)
    k, v = (rand(batch, seqlen, 2, head_dim, dtype=dtype, device=device) for _ in range(2))
    check_attention(q, k, v, backend=backend, causal=causal)


SINGLE_KEY_BACKENDS = [
    pytest.param("numba", id="numba"),
    pytest.param("triton", id="triton", marks=pytest.mark.xfail(
        strict=True, reason="the Triton backward's dS = P (dP - delta) leaves ~1e-6 on a "
        "row that sees one key (issue 21, point 5, done for Numba only)")),
]


@pytest.mark.parametrize("backend", SINGLE_KEY_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("varlen", [False, True], ids=["dense", "varlen"])
def test_rows_that_see_one_key_have_exact_gradients(backend, dtype, varlen):
    """flash-attn's FlashAttention-3 tests take seqlen_k = 1, where P = 1 and O = v: the
    true dq and dk are exactly 0 (the reference, autograd through softmax, gets 0), so any
    rounding fails their 2x-the-reference rule. Every row here sees one key: seqlen_k = 1,
    and a (0, 0) window. With an LSE gradient, dq = dLSE * k * scale."""
    device = DEVICES[backend]
    torch.manual_seed(3)
    for seqlen_k, window in ((1, (-1, -1)), (9, (0, 0))):
        q = rand(2, 9, 2, 32, dtype=dtype, device=device)
        k, v = (rand(2, seqlen_k, 2, 32, dtype=dtype, device=device) for _ in range(2))
        dout = torch.randn_like(q)
        lengths = None
        if varlen:
            q, k, v, dout = (x.flatten(0, 1) for x in (q, k, v, dout))
            lengths = (cu_seqlens([9, 9], device), cu_seqlens([seqlen_k] * 2, device), 9,
                       seqlen_k)
        got = run(q, k, v, dout, None, backend, lengths, window_size=window)
        assert torch.equal(got["dq"], torch.zeros_like(q))
        assert torch.equal(got["dk"], torch.zeros_like(k))
        dlse = torch.randn_like(got["lse"], dtype=torch.float32)
        got = run(q, k, v, dout, dlse, backend, lengths, window_size=window)
        want = run(q.double(), k.double(), v.double(), dout, dlse, "torch", lengths,
                   window_size=window)
        torch.testing.assert_close(got["dq"].double(), want["dq"], rtol=2e-3, atol=2e-3)
