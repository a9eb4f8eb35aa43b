"""flash_attn_with_kvcache against an oracle written from flash-attn 2.8's definition (its
test_flash_attn_kvcache's method): the cache update in place, rotary (both layouts) at
absolute positions, paged caches with scattered pages of any size, cache_batch_idx,
leftpad, ragged cache_seqlens (0 included), causal / window / softcap / ALiBi; and the
PagedKVCache allocator."""

import math

import pytest
import torch

from attention_helpers import DEVICES, rand
from kernelsuite.attention import PagedKVCache, flash_attn_with_kvcache
from kernelsuite.harness.numerics import check_close

BACKENDS = ["numba", "triton", "torch"]


def rotary_oracle(x, cos, sin, positions, interleaved):
    """Rotary as complex multiplication, in float64: channel pairs (interleaved) or the two
    halves of the rotary dims are the real and imaginary parts."""
    half = cos.shape[1]
    turn = torch.complex(cos.double(), sin.double())[positions][:, :, None, :]
    rot = x[..., :2 * half].double()
    if interleaved:
        z = torch.complex(rot[..., 0::2], rot[..., 1::2]) * turn
        out = torch.stack([z.real, z.imag], -1).flatten(-2)
    else:
        z = torch.complex(rot[..., :half], rot[..., half:]) * turn
        out = torch.cat([z.real, z.imag], -1)
    return torch.cat([out, x[..., 2 * half:].double()], -1)


def oracle(q, k_cache, v_cache, k, v, cos, sin, seqlens, batch_idx, leftpad, table, causal,
           window, softcap, interleaved, slopes):
    """(out, lse, logical k cache, logical v cache) in float64, per (batch, head, row)."""
    batch, sq, hq, d = q.shape
    if table is None:
        kc, vc = k_cache[batch_idx].double(), v_cache[batch_idx].double()
    else:
        kc, vc = (c[table.long()].flatten(1, 2).double() for c in (k_cache, v_cache))
    capacity = kc.shape[1]
    s_new = 0 if k is None else k.shape[1]
    qd = q.double()
    if k is not None:
        kn = k.double()
        if cos is not None:
            kn = rotary_oracle(k, cos, sin, seqlens[:, None] + torch.arange(s_new), interleaved)
        for b in range(batch):
            kc[b, seqlens[b]:seqlens[b] + s_new] = kn[b].to(k.dtype).double()
            vc[b, seqlens[b]:seqlens[b] + s_new] = v[b].double()
    left, right = window
    left = -1 if left >= capacity else left
    right = 0 if causal else (-1 if right >= capacity else right)
    if cos is not None:
        local = left >= 0 or right >= 0
        rows = torch.arange(sq) if local else torch.zeros(sq, dtype=torch.long)
        qd = rotary_oracle(q, cos, sin, seqlens[:, None] + rows, interleaved)
    out = torch.zeros(batch, sq, hq, d, dtype=torch.float64)
    lse = torch.full((batch, hq, sq), -math.inf, dtype=torch.float64)
    group = hq // kc.shape[2]
    for b in range(batch):
        end = int(seqlens[b]) + s_new
        for h in range(hq):
            for r in range(sq):
                pos = r + end - sq  # bottom-right aligned on the cache's end
                keys = [p for p in range(int(leftpad[b]), end)
                        if (left < 0 or p >= pos - left) and (right < 0 or p <= pos + right)]
                if not keys:
                    continue
                kk, vv = kc[b, keys, h // group], vc[b, keys, h // group]
                s = kk @ qd[b, r, h] / math.sqrt(d)
                if softcap:
                    s = softcap * torch.tanh(s / softcap)
                if slopes is not None:
                    j = torch.tensor(keys, dtype=torch.float64) - int(leftpad[b])
                    lk = end - int(leftpad[b])
                    s = s + (slopes[b, h] * j if left < 0 and right == 0
                             else -slopes[b, h] * (r + lk - sq - j).abs())
                lse[b, h, r] = torch.logsumexp(s, 0)
                out[b, r, h] = torch.softmax(s, 0) @ vv
    return out, lse, kc, vc


# name: (batch, seqlen_q, seqlen_new, page_size (None: contiguous), options)
CASES = {
    "decode": (3, 1, 1, None, {}),
    "decode_no_new": (3, 1, 0, None, {}),
    "speculative_causal": (2, 4, 4, None, dict(causal=True)),
    "prefill_chunk_window": (2, 5, 5, None, dict(causal=True, window=(6, 0))),
    "batch_idx_leftpad": (3, 2, 2, None, dict(batch_idx=True, leftpad=True, causal=True)),
    "rotary_interleaved": (2, 3, 3, None, dict(rotary=True, interleaved=True, causal=True)),
    "rotary_halves_noncausal": (2, 3, 2, None, dict(rotary=True, interleaved=False)),
    "softcap_alibi": (2, 3, 3, None, dict(softcap=4.0, alibi=True, causal=True)),
    "alibi_noncausal": (2, 2, 1, None, dict(alibi=True)),
    "paged_1": (3, 1, 1, 1, dict(causal=True)),
    "paged_4_rotary": (3, 2, 2, 4, dict(rotary=True, causal=True)),
    "paged_16_leftpad_window": (2, 3, 3, 16, dict(leftpad=True, window=(5, 2))),
}
CAPACITY, HQ, HKV, D = 48, 4, 2, 32


def _inputs(case, dtype, device, gen):
    batch, sq, s_new, page, opts = CASES[case]
    q = rand(batch, sq, HQ, D, dtype=dtype, device=device)
    seqlens = torch.randint(0, CAPACITY - s_new + 1, (batch,), generator=gen)
    seqlens[0] = 0 if s_new else 1  # an empty cache (or a one-token one)
    call = dict(causal=opts.get("causal", False), window_size=opts.get("window", (-1, -1)),
                softcap=opts.get("softcap", 0.0),
                rotary_interleaved=opts.get("interleaved", True))
    batch_idx = table = None
    if page is None:
        rows = batch + 2 if opts.get("batch_idx") else batch
        k_cache, v_cache = (rand(rows, CAPACITY, HKV, D, dtype=dtype, device=device)
                            for _ in range(2))
        if opts.get("batch_idx"):
            batch_idx = torch.randperm(rows, generator=gen)[:batch].to(torch.int32)
            call["cache_batch_idx"] = batch_idx.to(device)
    else:  # scattered pages: a random permutation of 3x the blocks needed
        per_seq = CAPACITY // page
        blocks = 3 * batch * per_seq
        k_cache, v_cache = (rand(blocks, page, HKV, D, dtype=dtype, device=device)
                            for _ in range(2))
        table = torch.randperm(blocks, generator=gen)[:batch * per_seq].view(batch, per_seq)
        table = table.to(torch.int32)
        call["block_table"] = table.to(device)
    leftpad = torch.zeros(batch, dtype=torch.long)
    if opts.get("leftpad"):
        leftpad = (torch.rand(batch, generator=gen) * (seqlens + 1)).long().clamp(max=seqlens)
        call["cache_leftpad"] = leftpad.to(torch.int32).to(device)
    k = v = cos = sin = None
    if s_new:
        k, v = (rand(batch, s_new, HKV, D, dtype=dtype, device=device) for _ in range(2))
        call.update(k=k, v=v)
    if opts.get("rotary"):
        angles = torch.rand(CAPACITY + sq, 8, generator=gen) * 2 * math.pi
        cos, sin = (f(angles).to(dtype).to(device) for f in (torch.cos, torch.sin))
        call.update(rotary_cos=cos, rotary_sin=sin)
    slopes = None
    if opts.get("alibi"):
        slopes = torch.rand(batch, HQ, generator=gen) * 0.3
        call["alibi_slopes"] = slopes.to(device)
    call["cache_seqlens"] = seqlens.to(torch.int32).to(device)
    truth = oracle(q.cpu(), k_cache.cpu(), v_cache.cpu(), None if k is None else k.cpu(),
                   None if v is None else v.cpu(), None if cos is None else cos.cpu(),
                   None if sin is None else sin.cpu(), seqlens,
                   torch.arange(batch) if batch_idx is None else batch_idx.long(), leftpad,
                   table, call["causal"], call["window_size"], call["softcap"],
                   call["rotary_interleaved"],
                   None if slopes is None else slopes.double())
    return q, k_cache, v_cache, call, truth, table


def _logical(cache, table, batch_idx):
    return cache[table.long()].flatten(1, 2) if table is not None else cache[batch_idx]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_against_the_oracle(case, backend, dtype):
    device = DEVICES.get(backend, "cpu")
    gen = torch.Generator().manual_seed(sorted(CASES).index(case))
    q, k_cache, v_cache, call, truth, table = _inputs(case, dtype, device, gen)
    want_out, want_lse, want_k, want_v = truth
    # the reference in q's dtype: the error a plain low-precision implementation makes
    lowp = flash_attn_with_kvcache(q, k_cache.clone(), v_cache.clone(), **call,
                                   return_softmax_lse=True, backend="torch")
    out, lse = flash_attn_with_kvcache(q, k_cache, v_cache, **call, return_softmax_lse=True,
                                       backend=backend)
    check_close("out", out.cpu(), lowp[0].cpu(), want_out, dtype)
    check_close("lse", lse.cpu(), lowp[1].cpu(), want_lse, dtype)
    # the rule above measures the kernels against the reference path's own error, and that
    # path shares the cache handling (rotary, append, gather): hold it to the oracle too
    bound = dict(rtol=0, atol=1e-5 if dtype == torch.float32 else 5e-3)
    torch.testing.assert_close(lowp[0].cpu().double(), want_out, **bound)
    torch.testing.assert_close(lowp[1].cpu().double(), want_lse, **bound)
    assert out.shape == q.shape and lse.shape == (q.shape[0], HQ, q.shape[1])
    batch_idx = call.get("cache_batch_idx")
    batch_idx = (torch.arange(q.shape[0]) if batch_idx is None else batch_idx.long()).to(device)
    got_k, got_v = _logical(k_cache, table, batch_idx), _logical(v_cache, table, batch_idx)
    # the append: rotated keys within one rounding of the dtype, values bit for bit, and
    # nothing else touched
    tol = dict(rtol=2e-3, atol=2e-3) if dtype == torch.float16 else dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_k.double().cpu(), want_k, **tol)
    assert torch.equal(got_v.double().cpu(), want_v)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_num_splits_and_window_past_the_cache(backend):
    """num_splits changes nothing here (the cache is shorter than one split's block); a
    window side at least the cache's capacity is unbounded, as flash-attn normalises it, which also makes rotary
    rotate every query at cache_seqlens (a non-local call)."""
    gen = torch.Generator().manual_seed(0)
    q, k_cache, v_cache, call, _, _ = _inputs("rotary_halves_noncausal", torch.float32, "cpu",
                                              gen)
    outs = [flash_attn_with_kvcache(q, k_cache.clone(), v_cache.clone(), **call,
                                    num_splits=n, backend=backend) for n in (0, 1, 3)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    wide = dict(call, window_size=(CAPACITY, CAPACITY))
    torch.testing.assert_close(flash_attn_with_kvcache(q, k_cache.clone(), v_cache.clone(),
                                                       **wide, backend=backend), outs[0])


BAD = {
    "append_past_capacity": (dict(cache_seqlens=CAPACITY), ValueError, "cache_seqlens"),
    "k_without_v": (dict(v=None), ValueError, "k and v"),
    "heads": (dict(q_heads=3), ValueError, "multiple"),
    "table_out_of_range": (dict(block_table=99), ValueError, "block_table entries"),
    "table_with_batch_idx": (dict(block_table=0, cache_batch_idx=True), ValueError,
                             "cache_batch_idx"),
    "leftpad_past_seqlens": (dict(cache_leftpad=5), ValueError, "cache_leftpad"),
    "rotary_without_k": (dict(rotary=True, k=None, v=None), ValueError, "rotary"),
    "num_splits": (dict(num_splits=129), ValueError, "num_splits"),
    "seqlens_dtype": (dict(cache_seqlens="int64"), ValueError, "cache_seqlens must be int32"),
    "cache_dtype": (dict(cache_dtype=torch.float16), TypeError, "k_cache must be"),
}


@pytest.mark.parametrize("case", BAD, ids=str)
def test_bad_input(case):
    change, exc, words = BAD[case]
    q = torch.randn(2, 1, 3 if change.get("q_heads") else 4, 16)
    paged = "block_table" in change
    cache_shape = (8, 4, 2, 16) if paged else (2, 8, 2, 16)
    k_cache = torch.zeros(cache_shape, dtype=change.get("cache_dtype", torch.float32))
    v_cache = torch.zeros(cache_shape, dtype=k_cache.dtype)
    k = torch.randn(2, 1, 2, 16)
    call = dict(k=k, v=torch.randn(2, 1, 2, 16), cache_seqlens=torch.tensor([3, 1],
                                                                           dtype=torch.int32))
    if paged:
        call["block_table"] = torch.tensor([[0, 1], [2, change["block_table"]]],
                                           dtype=torch.int32)
    if change.get("cache_batch_idx"):
        call["cache_batch_idx"] = torch.tensor([0, 1], dtype=torch.int32)
    for name in ("v", "k"):
        if name in change:
            call[name] = change[name]
    if "cache_seqlens" in change:
        call["cache_seqlens"] = (torch.tensor([3, 1]) if change["cache_seqlens"] == "int64"
                                 else change["cache_seqlens"])
    if "cache_leftpad" in change:
        call["cache_leftpad"] = torch.tensor([change["cache_leftpad"], 0], dtype=torch.int32)
    if change.get("rotary"):
        call.update(rotary_cos=torch.ones(16, 4), rotary_sin=torch.zeros(16, 4))
    if "num_splits" in change:
        call["num_splits"] = change["num_splits"]
    with pytest.raises(exc, match=words):
        flash_attn_with_kvcache(q, k_cache, v_cache, **call, backend="torch")


def test_paged_cache_allocator_and_a_decode_loop():
    """PagedKVCache hands out scattered pages; decoding token by token through it equals
    attention over the whole sequence at once (causal, the last row each step)."""
    cache = PagedKVCache(num_blocks=16, page_size=3, heads_kv=2, head_dim=16)
    seqs = [cache.new_sequence() for _ in range(2)]
    total = 10
    q, k, v = (torch.randn(2, total, h, 16) for h in (4, 2, 2))
    for t in range(total):
        seqlens, table = cache.step(seqs, 1)
        assert seqlens.tolist() == [t, t]
        out = flash_attn_with_kvcache(q[:, t:t + 1], cache.k_cache, cache.v_cache,
                                      k[:, t:t + 1], v[:, t:t + 1], cache_seqlens=seqlens,
                                      block_table=table, causal=True, backend="numba")
        want = flash_attn_with_kvcache(q[:, :t + 1], k[:, :t + 1], v[:, :t + 1],
                                       causal=True, backend="torch")[:, -1:]
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    assert cache.length(seqs[0]) == total and cache.free_blocks == 16 - 2 * 4
    # the two sequences grew in turn, so their pages interleave
    assert table.tolist() == [[0, 2, 4, 6], [1, 3, 5, 7]]
    with pytest.raises(MemoryError, match="blocks"):
        cache.reserve(seqs[0], 100)
    cache.free(seqs[0])
    assert cache.free_blocks == 16 - 4
    with pytest.raises(KeyError, match="unknown sequence"):
        cache.length(seqs[0])


@pytest.mark.parametrize("backend", ["numba", "triton"])
@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_split_kv_decode(paged, backend):
    """The split-KV kernels on caches long enough to split (ragged, one empty), GQA 8:2,
    one and three query rows: every split count gives the reference's answer."""
    device = DEVICES[backend]
    gen = torch.Generator().manual_seed(5)
    batch, capacity, page = 4, 320, 16
    seqlens = torch.tensor([0, 70, 257, 317], dtype=torch.int32)
    if paged:
        blocks = 3 * batch * capacity // page
        k_cache, v_cache = (torch.randn(blocks, page, 2, 32, generator=gen) for _ in range(2))
        table = torch.randperm(blocks, generator=gen)[:batch * capacity // page]
        where = dict(block_table=table.view(batch, -1).to(torch.int32))
    else:
        k_cache, v_cache = (torch.randn(batch, capacity, 2, 32, generator=gen)
                            for _ in range(2))
        where = {}
    for sq, opts in ((1, {}), (3, dict(causal=True, window_size=(100, 0), softcap=5.0,
                                       alibi_slopes=torch.rand(8, generator=gen)))):
        q = torch.randn(batch, sq, 8, 32, generator=gen)
        k, v = (torch.randn(batch, sq, 2, 32, generator=gen) for _ in range(2))
        want = flash_attn_with_kvcache(q, k_cache.clone(), v_cache.clone(), k, v,
                                       cache_seqlens=seqlens, **where, **opts,
                                       return_softmax_lse=True, backend="torch")
        for splits in (1, 3, 0):
            moved = {name: t.to(device) if torch.is_tensor(t) else t
                     for name, t in dict(where, **opts).items()}
            got = flash_attn_with_kvcache(q.to(device), k_cache.to(device), v_cache.to(device),
                                          k.to(device), v.to(device),
                                          cache_seqlens=seqlens.to(device), **moved,
                                          num_splits=splits, return_softmax_lse=True,
                                          backend=backend)
            for g, w in zip(got, want):
                torch.testing.assert_close(g.cpu(), w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype, heads, heads_kv, d, sq, page", [
    (torch.float64, 4, 4, 24, 1, None),   # MHA: one query row per task, padded to 4
    (torch.float32, 16, 2, 8, 3, 5),      # 24 rows per kv head, pages of 5
    (torch.float32, 3, 1, 40, 1, 1),      # 3 rows, pages of one token
    (torch.float32, 4, 2, 20, 2, None),   # head_dim 20: the gather path
], ids=["f64-mha", "group8-sq3-page5", "mqa3-page1", "d20-gather"])
def test_numba_decode_shapes(dtype, heads, heads_kv, d, sq, page):
    """The Numba split-KV kernel's tiling edges (query rows not a multiple of 4, odd runs
    of keys within a page, float64) against the reference, one and two splits."""
    gen = torch.Generator().manual_seed(11)
    batch, capacity = 3, 150
    seqlens = torch.tensor([149 - sq, 0, 67], dtype=torch.int32)
    if page is None:
        k_cache, v_cache = (torch.randn(batch, capacity, heads_kv, d, generator=gen,
                                        dtype=dtype) for _ in range(2))
        where = {}
    else:
        per_seq = -(-capacity // page)
        blocks = 2 * batch * per_seq
        k_cache, v_cache = (torch.randn(blocks, page, heads_kv, d, generator=gen, dtype=dtype)
                            for _ in range(2))
        table = torch.randperm(blocks, generator=gen)[:batch * per_seq]
        where = dict(block_table=table.view(batch, per_seq).to(torch.int32))
    q = torch.randn(batch, sq, heads, d, generator=gen, dtype=dtype)
    k, v = (torch.randn(batch, sq, heads_kv, d, generator=gen, dtype=dtype) for _ in range(2))
    want = flash_attn_with_kvcache(q, k_cache.clone(), v_cache.clone(), k, v,
                                   cache_seqlens=seqlens, causal=True, **where,
                                   return_softmax_lse=True, backend="torch")
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for splits in (1, 2):
        got = flash_attn_with_kvcache(q, k_cache.clone(), v_cache.clone(), k, v,
                                      cache_seqlens=seqlens, causal=True, **where,
                                      num_splits=splits, return_softmax_lse=True,
                                      backend="numba")
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=tol, atol=tol)


def test_decode_benchmark_case():
    """The decode area's case: its paged cache holds the contiguous one's rows, and every
    implementation's output is the float64 reference's."""
    from kernelsuite.harness.cases import get_cases
    from kernelsuite.harness.measure import Call

    (case,) = get_cases(["decode"], "cpu", "tiny")
    assert case.reference == "torch" and case.role("numba-paged") == "ours"
    for impl in case.impls:
        call = Call(case, impl, "cpu")
        assert call.max_error < 1e-5, impl
    x = call.inputs
    pages = x.k_pages[x.table.long()].flatten(1, 2)
    assert torch.equal(pages, x.k) and x.table.unique().numel() == x.table.numel()
