"""Fuzzing every batching entry point against an oracle: packing (Numba and the Python
reference against the algorithms' definitions, for tiny to 2^62 capacities, lengths of 0,
1, capacity and beyond), the bucketing sampler (against its description re-run in plain
Python ints), pad/unpad round trips (Triton under the interpreter and the reference, with
strided inputs), collate of strided token tensors, and bad arguments named in the error."""

import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batching_helpers import ORACLES, PAD, check_packing, check_rows
from kernelsuite.batching import (ALGORITHMS, LengthBucketBatchSampler, collate_packed,
                                  pack_for_ranks, pack_sequences, pad_input, reference,
                                  unpad_input)
from kernelsuite.batching.common import MAX_TOKENS

IMPLS = {"numba": pack_sequences, "python": reference.pack_sequences}


def fuzz(max_examples):
    return settings(max_examples=max_examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def packing_problems(draw):
    """Tiny capacities (the counting-sort path) and large ones up to 2^62 - 1 (the ranked
    path), lengths from the edges (0, 1, capacity, capacity + 1), exact fractions (ties,
    full bins) and anywhere below capacity."""
    capacity = draw(st.one_of(st.integers(1, 64), st.integers(65, 2**40),
                              st.integers(2**40, MAX_TOKENS)))
    length = st.one_of(
        st.sampled_from([0, 1, capacity, capacity + 1, capacity // 2, capacity // 3]),
        st.integers(0, capacity), st.integers(0, min(capacity, 8)))
    return draw(st.lists(length, max_size=40)), capacity


@fuzz(1500)
@given(packing_problems(), st.sampled_from(ALGORITHMS), st.booleans())
def test_packing_follows_the_definition(problem, algorithm, truncate):
    lengths, capacity = problem
    cut = [min(x, capacity) for x in lengths]
    for name, pack in IMPLS.items():
        if not truncate and cut != lengths:
            hi = lengths.index(max(lengths))
            with pytest.raises(ValueError, match=rf"lengths\[{hi}\] = {lengths[hi]} is longer "
                                                 rf"than capacity={capacity}"):
                pack(lengths, capacity, algorithm, truncate)
        elif sum(cut) > MAX_TOKENS:
            with pytest.raises(ValueError, match=r"lengths sum to \d+ tokens"):
                pack(lengths, capacity, algorithm, truncate)
        else:
            p = pack(lengths, capacity, algorithm, truncate)
            want_ids, want_bins = ORACLES[algorithm](cut, capacity)
            assert p.lengths.tolist() == cut and p.num_bins == want_bins, name
            np.testing.assert_array_equal(p.bin_ids, want_ids, err_msg=name)
            check_packing(p, cut, capacity)
            assert p.tokens == sum(cut)


@fuzz(500)
@given(st.integers(1, 64).flatmap(lambda c: st.tuples(
    st.just(c), st.lists(st.integers(0, c), max_size=60))),
    st.sampled_from([2**20, 2**33, 2**50]), st.sampled_from(ALGORITHMS))
def test_capacity_scale_does_not_change_the_bins(problem, scale, algorithm):
    """Lengths and capacity times a power of two: the same bins (the algorithms compare
    sums with capacity only), by the dense path at 1x and the ranked one at scale."""
    capacity, lengths = problem
    small = pack_sequences(lengths, capacity, algorithm)
    big = pack_sequences([x * scale for x in lengths], capacity * scale, algorithm)
    np.testing.assert_array_equal(big.bin_ids, small.bin_ids)
    assert big.loads.tolist() == [x * scale for x in small.loads.tolist()]
    ranks = pack_for_ranks([x * scale for x in lengths], capacity * scale, 3, algorithm)
    assert ranks.tokens.sum() == sum(lengths) * scale


def cut_batches(order, lengths, max_tokens, max_batch_size, padded):
    """The sampler's cut, by its description, in Python ints."""
    batches, cur = [], []
    for i in order:
        grown = cur + [i]
        cost = len(grown) * max(lengths[j] for j in grown) if padded else \
            sum(lengths[j] for j in grown)
        if cur and (cost > max_tokens or len(cur) == max_batch_size):
            batches.append(cur)
            grown = [i]
        cur = grown
    return batches + [cur] if cur else batches


@st.composite
def sampler_problems(draw):
    max_tokens = draw(st.one_of(st.integers(1, 100), st.integers(1, MAX_TOKENS)))
    length = st.one_of(st.sampled_from([0, 1, max_tokens, max_tokens // 2]),
                       st.integers(0, max_tokens))
    lengths = draw(st.lists(length, max_size=40))
    total = sum(lengths)
    if total > MAX_TOKENS:  # refused (checked in test_invalid_arguments_are_named)
        lengths = [x // (total // MAX_TOKENS + 1) for x in lengths]
    return lengths, max_tokens


@fuzz(500)
@given(sampler_problems(), st.booleans(), st.booleans(), st.integers(0, 3),
       st.one_of(st.none(), st.integers(1, 6)), st.one_of(st.none(), st.integers(1, 12)),
       st.integers(1, 3), st.booleans(), st.integers(-2**63, 2**63 - 1))
def test_sampler_follows_its_description(problem, padded, shuffle, epoch, max_batch_size,
                                         bucket_size, world_size, drop_last, seed):
    lengths, max_tokens = problem
    n = len(lengths)
    make = lambda rank: LengthBucketBatchSampler(  # noqa: E731
        lengths, max_tokens, max_batch_size=max_batch_size, bucket_size=bucket_size,
        shuffle=shuffle, seed=seed, drop_last=drop_last, padded=padded, rank=rank,
        world_size=world_size)
    s = make(0)
    s.set_epoch(epoch)
    every = [b.tolist() for b in s.batches()]
    gen = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(n, generator=gen).tolist() if shuffle else list(range(n))
    size = bucket_size or max(1, n)
    want = []
    for lo in range(0, n, size):
        bucket = sorted(order[lo:lo + size], key=lambda i: -lengths[i])  # stable
        want += cut_batches(bucket, lengths, max_tokens, max_batch_size or n + 1, padded)
    assert sorted(every) == sorted(want)  # the batch shuffle only reorders
    assert sorted(i for b in every for i in b) == list(range(n))  # each index once
    for b in every:
        sizes = [lengths[i] for i in b]
        assert (len(b) * max(sizes) if padded else sum(sizes)) <= max_tokens
        assert len(b) <= (max_batch_size or n + 1)
    ranks = []
    for r in range(world_size):
        sr = make(r)
        sr.set_epoch(epoch)
        ranks.append(list(sr))
        assert len(sr) == len(ranks[-1])
    assert len({len(b) for b in ranks}) == 1
    dealt = [i for r in ranks for b in r for i in b]
    if drop_last:
        assert len(dealt) == len(set(dealt))
    else:
        assert set(dealt) == set(range(n))


DTYPES = [torch.float32, torch.float16, torch.int64]


@st.composite
def padded_inputs(draw):
    batch, seqlen = draw(st.integers(0, 3)), draw(st.integers(0, 6))
    features = draw(st.sampled_from([(), (1,), (3,), (2, 3)]))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31))
    gen = torch.Generator().manual_seed(seed)
    # strided layouts: hidden states as a transposed or sliced view, the mask transposed
    layout = draw(st.sampled_from(["contiguous", "transposed", "sliced"]))
    shape = (batch, seqlen) + features
    base = (torch.randn((seqlen, batch) + features, generator=gen) * 50).to(dtype)
    if layout == "transposed":
        x = base.transpose(0, 1)
    elif layout == "sliced" and features:
        wide = (torch.randn(shape[:-1] + (2 * features[-1],), generator=gen) * 50).to(dtype)
        x = wide[..., ::2]
    else:
        x = base.transpose(0, 1).contiguous()
    assert x.shape == shape
    mask = torch.rand((seqlen, batch), generator=gen) < draw(st.sampled_from([0.0, 0.5, 1.0]))
    mask = mask.t()
    if draw(st.booleans()):
        mask = mask.to(torch.int32)
    return x, mask


@fuzz(150)
@given(padded_inputs(), st.sampled_from(["triton", "torch"]), st.booleans())
def test_unpad_then_pad_round_trips(inputs, backend, strided_indices):
    x, mask = inputs
    batch, seqlen = mask.shape
    h, indices, cu_seqlens, max_seqlen, seqused = unpad_input(x, mask, backend=backend)
    keep = mask.bool()
    assert torch.equal(h, x[keep])  # boolean indexing: the kept rows in row-major order
    assert torch.equal(indices, torch.nonzero(keep.flatten()).flatten())
    lengths = keep.sum(1)
    assert cu_seqlens.dtype == torch.int32
    assert cu_seqlens.tolist() == [0] + torch.cumsum(lengths, 0).tolist()
    assert max_seqlen == (int(lengths.max()) if batch else 0)
    assert seqused.dtype == torch.int32 and seqused.tolist() == lengths.tolist()
    if strided_indices:  # a view every other element, maybe int32
        spaced = torch.zeros(2 * indices.numel(), dtype=torch.int32)
        spaced[::2] = indices
        indices = spaced[::2]
    back = pad_input(h, indices, batch, seqlen, backend=backend)
    where = keep.reshape(keep.shape + (1,) * (x.ndim - 2))
    assert back.dtype == x.dtype
    assert torch.equal(back, torch.where(where, x, torch.zeros((), dtype=x.dtype)))


@fuzz(40)
@given(st.integers(1, 12), st.integers(0, 2**31), st.booleans(), st.booleans())
def test_pad_gradient_is_the_gather(n_rows, seed, column_major, strided_indices):
    """pad_input at any distinct indices (not only unpad's, which are sorted): output and
    gradient against the reference; the rows as a column-major view, the indices as a
    strided one (the backward read them as raw storage)."""
    gen = torch.Generator().manual_seed(seed)
    total = n_rows + int(torch.randint(0, 5, (), generator=gen))
    indices = torch.randperm(total, generator=gen)[:n_rows]
    if strided_indices:
        indices = torch.stack([indices, -indices], 1)[:, 0]
    h = torch.randn(n_rows, 3, generator=gen, dtype=torch.float64)
    if column_major:
        h = h.t().contiguous().t()
    hg = h.clone().requires_grad_()
    out = pad_input(hg, indices, 1, total, backend="triton")
    assert torch.equal(out, reference.pad_input(h, indices, 1, total))
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    out.backward(grad)
    assert torch.equal(hg.grad, grad.reshape(total, 3)[indices])


@fuzz(200)
@given(st.integers(1, 30).flatmap(lambda c: st.tuples(
    st.just(c), st.lists(st.integers(0, c + 5), max_size=20))),
    st.sampled_from(ALGORITHMS), st.integers(0, 2**32 - 1))
def test_collate_of_strided_token_tensors(problem, algorithm, seed):
    """Documents as strided int32 tensors (and longer than capacity, truncated): the rows
    hold them token by token as they hold numpy copies."""
    capacity, lengths = problem
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, 1000, n) for n in lengths]
    packing = pack_sequences(lengths, capacity, algorithm, truncate=True)
    views = []
    for d in docs:
        wide = torch.zeros(2 * d.size, dtype=torch.int32)
        wide[::2] = torch.from_numpy(d)
        views.append(wide[::2])
    batch = collate_packed(views, packing, capacity, PAD)
    check_rows(batch, docs, packing, capacity)
    wider = collate_packed(docs, packing, capacity + 3, PAD)
    check_rows(wider, docs, packing, capacity + 3)


JUNK_INTS = [0, -1, 2.5, 4.0, True, "8", None, 2**62, 2**70, np.float32(3)]


@fuzz(60)
@given(st.sampled_from(JUNK_INTS), st.sampled_from(ALGORITHMS))
def test_invalid_arguments_are_named(junk, algorithm):
    """A bad value for any size argument: ValueError or TypeError naming that argument."""
    def named(name, fn, *args, **kwargs):
        with pytest.raises((ValueError, TypeError), match=re.escape(name)):
            fn(*args, **kwargs)

    named("capacity", pack_sequences, [1, 2], junk, algorithm)
    named("capacity", reference.pack_sequences, [1, 2], junk, algorithm)
    named("world_size", pack_for_ranks, [1, 2], 8, junk, algorithm)
    named("max_tokens", LengthBucketBatchSampler, [1, 2], junk)
    if junk is not None:  # None: their defaults
        named("max_batch_size", LengthBucketBatchSampler, [1, 2], 8, max_batch_size=junk)
        named("bucket_size", LengthBucketBatchSampler, [1, 2], 8, bucket_size=junk)
    packing = pack_sequences([2, 1], 4)
    named("capacity", collate_packed, [[5, 6], [7]], packing, junk, PAD)
    if not isinstance(junk, int) or isinstance(junk, bool) or junk >= 2**63:
        named("pad_id", collate_packed, [[5, 6], [7]], packing, 4, junk)
        named("ignore_index", collate_packed, [[5, 6], [7]], packing, 4, PAD, junk)
        named("seed", LengthBucketBatchSampler, [1, 2], 8, seed=junk)
    if junk not in (0, 2**62) or isinstance(junk, (bool, float)):
        x, mask = torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)
        h, indices, _, _, _ = unpad_input(x, mask)
        for backend in ("triton", "torch"):
            named("batch", pad_input, h, indices, junk, 3, backend=backend)
    for lengths in ([1, junk], [[1, 2]], np.array([1.0, 2.0]), [1, -3], [2**62, 2**62]):
        if isinstance(junk, int) and not isinstance(junk, bool) and 0 <= junk <= 8:
            continue  # a valid length
        named("lengths", pack_sequences, lengths, 8 if lengths[-1] != 2**62 else MAX_TOKENS,
              algorithm)
        named("lengths", LengthBucketBatchSampler, lengths,
              8 if lengths[-1] != 2**62 else MAX_TOKENS)
