"""flash-attn 2.8's API as code written for it calls it: positional order, packed
functions, return_attn_probs, integer-likes and flags as flash-attn takes them, any
head_dim up to 256. Each against the reference (or the unpacked call), on the Numba
backend and on Triton (interpreted on CPU without a GPU)."""

import inspect

import numpy as np
import pytest
import torch

from attention_helpers import DEVICES, cu_seqlens, rand
from kernelsuite.attention import api
from kernelsuite.attention import (flash_attn_func, flash_attn_kvpacked_func,
                                   flash_attn_qkvpacked_func, flash_attn_varlen_func,
                                   flash_attn_varlen_kvpacked_func,
                                   flash_attn_varlen_qkvpacked_func, reference)

# flash-attn 2.8.x (flash_attn/flash_attn_interface.py): the parameters callers may pass by
# position, in order
SETTINGS = ["dropout_p", "softmax_scale", "causal", "window_size", "softcap", "alibi_slopes",
            "deterministic", "return_attn_probs"]
SIGNATURES = {
    flash_attn_func: ["q", "k", "v"] + SETTINGS,
    flash_attn_qkvpacked_func: ["qkv"] + SETTINGS,
    flash_attn_kvpacked_func: ["q", "kv"] + SETTINGS,
    flash_attn_varlen_func: ["q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q",
                             "max_seqlen_k"] + SETTINGS + ["block_table"],
    flash_attn_varlen_qkvpacked_func: ["qkv", "cu_seqlens", "max_seqlen"] + SETTINGS,
    flash_attn_varlen_kvpacked_func: ["q", "kv", "cu_seqlens_q", "cu_seqlens_k",
                                      "max_seqlen_q", "max_seqlen_k"] + SETTINGS,
}
BACKENDS = ["numba", "triton"]


@pytest.mark.parametrize("fn", SIGNATURES, ids=lambda f: f.__name__)
def test_signatures_are_flash_attns(fn):
    params = inspect.signature(fn).parameters.values()
    positional = [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert positional == SIGNATURES[fn]
    # the project's own options come after a *, so no flash-attn call can reach them
    assert [p.name for p in params if p.kind == p.KEYWORD_ONLY] == ["backend", "return_lse",
                                                                    "sinks"]
    assert inspect.signature(fn).parameters["dropout_p"].default == 0.0


def test_the_fourth_positional_is_dropout_not_the_scale():
    """flash_attn_func(q, k, v, 0.1, causal=True) took 0.1 as softmax_scale (output off by
    0.64): now it is dropout_p, the same draw as the reference's under one seed."""
    q, k, v = (rand(1, 8, 2, 32, dtype=torch.float32, device="cpu") for _ in range(3))
    torch.manual_seed(3)
    got = flash_attn_func(q, k, v, 0.1, causal=True)
    torch.manual_seed(3)
    torch.testing.assert_close(got, reference.flash_attn_func(q, k, v, dropout_p=0.1,
                                                              causal=True))
    assert not torch.allclose(got, reference.flash_attn_func(q, k, v, causal=True))
    got = flash_attn_func(q, k, v, 0.0, 0.5, True, (3, 0), 0.0, None, True)
    want = reference.flash_attn_func(q, k, v, softmax_scale=0.5, causal=True,
                                     window_size=(3, 0))
    torch.testing.assert_close(got, want)
    with pytest.raises(TypeError):  # backend is keyword-only
        flash_attn_func(q, k, v, 0.0, None, False, (-1, -1), 0.0, None, False, False, "torch")


@pytest.mark.parametrize("backend", BACKENDS)
def test_return_attn_probs_gives_out_lse_and_no_mask_without_dropout(backend):
    q, k, v = (rand(1, 9, 2, 16, dtype=torch.float32, device=DEVICES[backend])
               for _ in range(3))
    out, lse, s_dmask = flash_attn_func(q, k, v, causal=True, return_attn_probs=True,
                                        backend=backend)
    want, want_lse = flash_attn_func(q, k, v, causal=True, return_lse=True, backend=backend)
    assert s_dmask is None and torch.equal(out, want) and torch.equal(lse, want_lse)
    assert lse.shape == (1, 2, 9) and lse.dtype == torch.float32


def test_integer_likes_and_flags_as_flash_attn_takes_them():
    lengths = (3, 5)
    q, k, v = (rand(8, 2, 16, dtype=torch.float32, device="cpu") for _ in range(3))
    cu = cu_seqlens(lengths, "cpu")
    want = flash_attn_varlen_func(q, k, v, cu, cu, 5, 5, causal=True, window_size=(2, 0))
    for max_seqlen in (np.int64(5), torch.tensor(5), np.int32(7)):
        got = flash_attn_varlen_func(q, k, v, cu, cu, max_seqlen, max_seqlen, causal=1,
                                     window_size=(np.int32(2), torch.tensor(0)))
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    dense = [t[None] for t in (q, k, v)]
    torch.testing.assert_close(flash_attn_func(*dense, causal=np.bool_(True)),
                               flash_attn_func(*dense, causal=True), rtol=0, atol=0)
    torch.testing.assert_close(flash_attn_func(*dense, causal=0, deterministic=1),
                               flash_attn_func(*dense), rtol=0, atol=0)
    with pytest.raises(TypeError, match="max_seqlen_q must be an int"):
        flash_attn_varlen_func(q, k, v, cu, cu, torch.tensor(5.0), 5)
    with pytest.raises(TypeError, match="block_table must be an int32"):
        flash_attn_varlen_func(q, k[None], v[None], cu, cu, 5, 5, block_table=torch.zeros(2, 1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("page_size", [1, 4])
def test_paged_prefill_equals_the_contiguous_call(backend, page_size, monkeypatch):
    """flash_attn_varlen_func with block_table: k, v are paged caches whose pages are
    scattered (a random permutation); the result (and dq) is that of the same keys stored
    contiguously. Without gradients the Triton forward reads the pages in place (no
    gather), bit for bit the contiguous call, ALiBi, softcap and windows included."""
    device = DEVICES[backend]
    lengths_q, lengths_k = (3, 6, 1), (5, 9, 0)
    q = rand(sum(lengths_q), 4, 16, dtype=torch.float32, device=device)
    k, v = (rand(sum(lengths_k), 2, 16, dtype=torch.float32, device=device) for _ in range(2))
    cq, ck = cu_seqlens(lengths_q, device), cu_seqlens(lengths_k, device)
    per_seq = -(-max(lengths_k) // page_size)
    blocks = torch.randperm(3 * per_seq * 3, generator=torch.Generator().manual_seed(1))
    table = blocks[:3 * per_seq].view(3, per_seq).to(torch.int32)
    k_pages, v_pages = (torch.zeros(len(blocks), page_size, 2, 16, device=device)
                        for _ in range(2))
    for b, (start, n) in enumerate(zip(ck.tolist(), lengths_k)):
        for j in range(n):
            k_pages[table[b, j // page_size], j % page_size] = k[start + j]
            v_pages[table[b, j // page_size], j % page_size] = v[start + j]
    kw = dict(causal=True, backend=backend)
    qa, qb = q.clone().requires_grad_(), q.clone().requires_grad_()
    got = flash_attn_varlen_func(qa, k_pages, v_pages, cq, ck, 6, 9,
                                 block_table=table.to(device), **kw)
    want = flash_attn_varlen_func(qb, k, v, cq, ck, 6, 9, **kw)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    dout = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, qa, dout)[0],
                               torch.autograd.grad(want, qb, dout)[0], rtol=0, atol=0)
    if backend == "triton":
        def no_gather(*args):
            raise AssertionError("the pages were gathered")

        monkeypatch.setattr(api, "gather_paged", no_gather)
    extra = dict(alibi_slopes=torch.rand(4, device=device), softcap=3.0, window_size=(4, 1))
    with torch.no_grad():
        for opts in (kw, dict(kw, **extra)):
            got = flash_attn_varlen_func(q, k_pages, v_pages, cq, ck, 6, 9,
                                         block_table=table.to(device), return_lse=True, **opts)
            want = flash_attn_varlen_func(q, k, v, cq, ck, 6, 9, return_lse=True, **opts)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, rtol=0, atol=0)
    short = table[:, :1].contiguous().to(device)  # 9 keys cannot fit one block of 1 or 4
    with pytest.raises(ValueError, match="does not fit the block table"):
        flash_attn_varlen_func(q, k_pages, v_pages, cq, ck, 6, 9, block_table=short, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head_dim", [8, 30, 59, 111])
def test_any_head_dim_up_to_256(backend, head_dim):
    """flash-attn pads head_dim to a multiple of 8 inside: 59 or 111 work there, and here;
    the default scale is the unpadded head_dim's."""
    device = DEVICES[backend]
    q, k, v = (rand(1, 12, 2, head_dim, dtype=torch.float32, device=device).requires_grad_()
               for _ in range(3))
    out = flash_attn_func(q, k, v, causal=True, backend=backend)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, v)]
    want = reference.flash_attn_func(*ref_in, causal=True)
    assert out.shape == q.shape
    torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-5)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    wants = torch.autograd.grad(want, ref_in, dout.double())
    for g, w in zip(grads, wants):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_functions_equal_the_unpacked_calls_and_their_gradients(backend):
    device = DEVICES[backend]
    qkv = rand(2, 7, 3, 2, 16, dtype=torch.float32, device=device).requires_grad_()
    kv = rand(2, 9, 2, 1, 16, dtype=torch.float32, device=device).requires_grad_()
    q = rand(2, 7, 2, 16, dtype=torch.float32, device=device).requires_grad_()
    kw = dict(causal=True, softcap=5.0, backend=backend,
              alibi_slopes=torch.tensor([0.3, 0.1], device=device))

    def check(packed_out, leaves, split_call):
        split = [x.detach().clone().requires_grad_() for x in leaves]
        want = split_call(*split)
        torch.testing.assert_close(packed_out, want, rtol=0, atol=0)
        dout = torch.randn_like(want)
        got = torch.autograd.grad(packed_out, leaves, dout)
        ref = torch.autograd.grad(want, split, dout)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, rtol=0, atol=0)

    check(flash_attn_qkvpacked_func(qkv, **kw), [qkv],
          lambda t: flash_attn_func(*t.unbind(2), **kw))
    check(flash_attn_kvpacked_func(q, kv, **kw), [q, kv],
          lambda a, b: flash_attn_func(a, *b.unbind(2), **kw))
    lq, lk = (3, 4), (5, 4)
    cq, ck = cu_seqlens(lq, device), cu_seqlens(lk, device)
    tq = qkv.detach().flatten(0, 1)[:7].clone().requires_grad_()
    check(flash_attn_varlen_qkvpacked_func(tq, cq, 4, **kw), [tq],
          lambda t: flash_attn_varlen_func(*t.unbind(1), cq, cq, 4, 4, **kw))
    tkv = kv.detach().flatten(0, 1)[:9].clone().requires_grad_()
    tq1 = q.detach().flatten(0, 1)[:7].clone().requires_grad_()
    check(flash_attn_varlen_kvpacked_func(tq1, tkv, cq, ck, 4, 5, **kw), [tq1, tkv],
          lambda a, b: flash_attn_varlen_func(a, *b.unbind(1), cq, ck, 4, 5, **kw))
    with pytest.raises(ValueError, match=r"qkv must be \(batch, seqlen, 3, heads, head_dim\)"):
        flash_attn_qkvpacked_func(kv)
    with pytest.raises(TypeError, match="kv must be a tensor"):
        flash_attn_kvpacked_func(q, None)
