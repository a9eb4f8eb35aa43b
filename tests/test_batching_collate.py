"""Packed rows: collate_packed's fields checked token by token, the end-to-end path
(documents -> packing -> rows -> flash_attn_varlen_func == each document alone, gradients
too), and the length-bucketing batch sampler."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from batching_helpers import PAD, check_rows, documents
from kernelsuite.attention import flash_attn_func, flash_attn_varlen_func
from kernelsuite.batching import (ALGORITHMS, LengthBucketBatchSampler, Packing,
                                  collate_packed, pack_sequences)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40).flatmap(
    lambda cap: st.tuples(st.just(cap), st.lists(st.integers(0, cap), max_size=30))),
    st.sampled_from(ALGORITHMS), st.integers(0, 2**32 - 1))
def test_rows_hold_every_document(problem, algorithm, seed):
    capacity, lengths = problem
    docs = documents(np.random.default_rng(seed), lengths)
    packing = pack_sequences(lengths, capacity, algorithm)
    check_rows(collate_packed(docs, packing, capacity, PAD), docs, packing, capacity)


def test_truncated_documents_and_token_list_forms():
    rng = np.random.default_rng(0)
    docs = documents(rng, [12, 3, 5])
    packing = pack_sequences([12, 3, 5], 10, truncate=True)
    forms = [docs[0].tolist(), torch.from_numpy(docs[1]), docs[2].astype(np.int32)]
    batch = collate_packed(forms, packing, 10, PAD)
    check_rows(batch, docs, packing, 10)
    assert docs[0][10] not in batch.input_ids[packing.bin_ids[0]].tolist()[10:]


def test_collate_rejects_mismatches():
    docs = documents(np.random.default_rng(0), [4, 6])
    packing = pack_sequences([4, 6], 10)
    with pytest.raises(ValueError, match="token_lists has 1 documents but the packing has 2"):
        collate_packed(docs[:1], packing, 10, PAD)
    with pytest.raises(ValueError, match=r"token_lists\[1\] has 5 tokens but the packing "
                                         "packed 6"):
        collate_packed([docs[0], docs[1][:5]], packing, 10, PAD)
    with pytest.raises(ValueError, match="capacity=8 is less than the fullest bin"):
        collate_packed(docs, packing, 8, PAD)
    with pytest.raises(TypeError, match="packing must be a Packing"):
        collate_packed(docs, [0, 0], 10, PAD)
    with pytest.raises(TypeError, match="pad_id must be an int"):
        collate_packed(docs, packing, 10, 0.5)
    with pytest.raises(TypeError, match=r"token_lists\[0\] must hold integers"):
        collate_packed([np.ones(4), docs[1]], packing, 10, PAD)
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        collate_packed(docs, packing, 10, PAD, ignore_index=1.5)  # was silently -> 1
    with pytest.raises(ValueError, match="pad_id must fit int64"):
        collate_packed(docs, packing, 10, 2**70)
    with pytest.raises(TypeError, match="token_lists must be a sequence"):
        collate_packed(5, packing, 10, PAD)
    for ids, lengths in (([0, 3], [4, 6]), ([0, 0], [4, 6, 1]), ([0.0, 0.0], [4, 6])):
        hand_made = Packing(np.array(ids), 1, 10, np.array(lengths))
        with pytest.raises(ValueError, match="packing is inconsistent"):
            collate_packed(docs, hand_made, 10, PAD)
    with pytest.raises(ValueError, match="do not fit int32 cu_seqlens"):  # checked first:
        collate_packed(docs, pack_sequences([4, 6], 2**31), 2**31, PAD)  # no 2^31 rows


BACKENDS = ["torch", "numba", "triton"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_attention_equals_each_document_alone(backend):
    """documents -> FFD packing -> rows -> q, k, v from the token ids -> causal varlen
    attention over all rows at once: each document's output and its q, k, v gradients
    equal attention run on that document alone."""
    rng = np.random.default_rng(3)
    lengths = [5, 17, 1, 33, 9, 12, 26, 2]
    capacity, heads, dim = 40, 2, 16
    docs = documents(rng, lengths, vocab=64)
    packing = pack_sequences(lengths, capacity)
    batch = collate_packed(docs, packing, capacity, pad_id=0)
    embed = torch.randn(64, 3, heads, dim, dtype=torch.float64)
    dtype = torch.float64 if backend != "triton" else torch.float32

    def qkv(ids):
        x = embed[ids].to(dtype)
        return [x[..., j, :, :].clone().requires_grad_() for j in range(3)]

    flat = batch.input_ids.reshape(-1)
    q, k, v = qkv(flat)
    out = flash_attn_varlen_func(q, k, v, batch.cu_seqlens, batch.cu_seqlens,
                                 batch.max_seqlen, batch.max_seqlen, causal=True,
                                 backend=backend)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for r, members in enumerate(packing.bins()):
        t = r * capacity
        for i in members:
            n = lengths[i]
            sl = slice(t, t + n)
            dq, dk, dv = qkv(torch.from_numpy(docs[i]))
            alone = flash_attn_func(dq[None], dk[None], dv[None], causal=True,
                                    backend=backend)[0]
            alone.backward(grad_out[sl])
            torch.testing.assert_close(out[sl], alone, **tol)
            for packed, single in ((q, dq), (k, dk), (v, dv)):
                torch.testing.assert_close(packed.grad[sl], single.grad, **tol)
            t += n


def test_sampler_covers_every_index_once_under_the_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, 2000)
    for padded in (True, False):
        s = LengthBucketBatchSampler(lengths, 1024, padded=padded, seed=1)
        batches = list(s)
        assert len(batches) == len(s)
        flat = sorted(i for b in batches for i in b)
        assert flat == list(range(2000))
        for b in batches:
            cost = len(b) * lengths[b].max() if padded else lengths[b].sum()
            assert cost <= 1024
    # bucketing: the padded batches waste little, unlike batches of random samples
    s = LengthBucketBatchSampler(lengths, 1024, seed=1)
    used = sum(lengths[b].sum() for b in s)
    padded_tokens = sum(len(b) * lengths[b].max() for b in s)
    assert used / padded_tokens > 0.9
    chunks = np.array_split(rng.permutation(2000), len(s))
    random_fill = sum(lengths[c].sum() for c in chunks) / sum(len(c) * lengths[c].max()
                                                             for c in chunks)
    assert random_fill < 0.7


def test_sampler_epochs_seeds_buckets_and_batch_size():
    lengths = np.random.default_rng(0).integers(1, 100, 500)
    s = LengthBucketBatchSampler(lengths, 400, seed=3, bucket_size=64, max_batch_size=6)
    first = list(s)
    assert first == list(s)  # same epoch, same batches
    assert max(len(b) for b in first) <= 6
    s.set_epoch(1)
    assert list(s) != first
    assert list(LengthBucketBatchSampler(lengths, 400, seed=4, bucket_size=64,
                                         max_batch_size=6)) != first
    ordered = list(LengthBucketBatchSampler(lengths, 400, shuffle=False))
    assert sorted(i for b in ordered for i in b) == list(range(500))
    loader = torch.utils.data.DataLoader(torch.arange(500), batch_sampler=s)
    assert sorted(torch.cat(list(loader)).tolist()) == list(range(500))


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_ranks_share_the_batches(drop_last):
    lengths = np.random.default_rng(0).integers(1, 100, 303)
    world = 4
    samplers = [LengthBucketBatchSampler(lengths, 300, seed=5, drop_last=drop_last,
                                         rank=r, world_size=world) for r in range(world)]
    every = samplers[0].batches()
    per_rank = [list(s) for s in samplers]
    assert len({len(b) for b in per_rank}) == 1  # the same number of steps on every rank
    n = len(every)
    want = n // world if drop_last else -(-n // world)
    assert len(per_rank[0]) == want
    dealt = [i for r in per_rank for b in r for i in b]
    if drop_last:  # disjoint, the tail dropped
        assert len(dealt) == len(set(dealt))
    else:  # everything, a few batches repeated to even out the ranks
        assert set(dealt) == set(range(303))


def test_sampler_bad_input():
    with pytest.raises(ValueError, match=r"lengths\[1\] = 600 is longer than max_tokens=512$"):
        LengthBucketBatchSampler([3, 600], 512)
    with pytest.raises(ValueError, match=r"lengths\[0\] = -1 is negative"):
        LengthBucketBatchSampler([-1, 6], 512)
    with pytest.raises(ValueError, match="max_tokens must be a positive int"):
        LengthBucketBatchSampler([1], 0)
    with pytest.raises(ValueError, match="max_batch_size must be a positive int"):
        LengthBucketBatchSampler([1], 8, max_batch_size=0)
    with pytest.raises(ValueError, match="rank must be an int"):
        LengthBucketBatchSampler([1], 8, rank=2, world_size=2)
    with pytest.raises(TypeError, match="lengths must hold integers, got a bool"):
        LengthBucketBatchSampler([1, True], 8)
    with pytest.raises(TypeError, match="seed must be an int"):
        LengthBucketBatchSampler([1], 8, seed=1.5)  # was cut to 1
    s = LengthBucketBatchSampler([1], 8)
    for epoch in (-1, 2.0, 2**63):
        with pytest.raises(ValueError, match=r"epoch must be an int in \[0, 2\*\*63\)"):
            s.set_epoch(epoch)


def test_sampler_huge_lengths():
    """A budget past 2^62 - 1 is refused: batch costs overflowed int64 and two sequences of
    2^62 tokens came out as one batch under a budget of 2^62 + 5. Up to it, costs are
    exact."""
    with pytest.raises(ValueError, match=r"max_tokens must be a positive int \(at most "
                                         r"2\*\*62 - 1\)"):
        LengthBucketBatchSampler([2**62, 2**62], 2**62 + 5)
    lengths = [2**60, 2**60 - 1, 2**59 + 1, 3, 0]
    for padded in (True, False):
        batches = list(LengthBucketBatchSampler(lengths, 2**61 - 1, padded=padded, seed=2))
        assert sorted(i for b in batches for i in b) == list(range(5))
        for b in batches:
            sizes = [lengths[i] for i in b]
            assert (len(b) * max(sizes) if padded else sum(sizes)) <= 2**61 - 1
