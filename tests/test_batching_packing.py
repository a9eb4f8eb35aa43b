"""Packing: the Numba kernels and the Python references against the algorithms'
definitions, the bin-packing properties, pack_for_ranks, and bad input."""

import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from batching_helpers import ORACLES, check_packing
from kernelsuite.batching import ALGORITHMS, pack_for_ranks, pack_sequences
from kernelsuite.batching import reference

IMPLS = {"numba": pack_sequences, "python": reference.pack_sequences}


@st.composite
def problems(draw, max_n=80):
    capacity = draw(st.integers(1, 64))
    lengths = draw(st.lists(st.integers(0, capacity), max_size=max_n))
    return lengths, capacity


@settings(max_examples=300, deadline=None)
@given(problems(), st.sampled_from(ALGORITHMS))
def test_kernel_and_reference_follow_the_definition(problem, algorithm):
    lengths, capacity = problem
    want_ids, want_bins = ORACLES[algorithm](lengths, capacity)
    for name, pack in IMPLS.items():
        p = pack(lengths, capacity, algorithm)
        check_packing(p, lengths, capacity)
        assert p.num_bins == want_bins, name
        np.testing.assert_array_equal(p.bin_ids, want_ids, err_msg=name)


@settings(max_examples=300, deadline=None)
@given(problems())
def test_decreasing_algorithms_against_greedy(problem):
    """FFD and BFD never use more bins than greedy run on the same order (first / best fit
    never open a bin next fit would not), and FFD stays within its proven bound
    11/9 OPT + 6/9 (Dosa 2007), with greedy >= OPT."""
    lengths, capacity = problem
    longest_first = sorted(lengths, reverse=True)
    greedy_sorted = pack_sequences(longest_first, capacity, "greedy").num_bins
    greedy = pack_sequences(lengths, capacity, "greedy").num_bins
    ffd = pack_sequences(lengths, capacity, "ffd").num_bins
    bfd = pack_sequences(lengths, capacity, "bfd").num_bins
    assert ffd <= greedy_sorted and bfd <= greedy_sorted
    assert 9 * ffd <= 11 * greedy + 6


def test_greedy_can_beat_ffd_on_a_lucky_order():
    """Why the property above is not 'FFD <= greedy' for any order: next fit in an order
    that happens to be an optimal packing finds it, FFD does not."""
    lengths = [5, 3, 2, 4, 3, 3]  # 5+3+2 and 4+3+3 fill two bins of 10
    assert pack_sequences(lengths, 10, "greedy").num_bins == 2
    assert pack_sequences(lengths, 10, "ffd").num_bins == 3


@pytest.mark.parametrize("capacity", [2048, 8192])
def test_realistic_lengths_pack_near_the_bound(capacity):
    """On gamma-distributed lengths FFD and BFD use at most one bin more than the lower
    bound (the last bin is partly empty) and fewer bins than greedy."""
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.gamma(5, 20, 20_000).round(), 10, 500).astype(np.int64)
    greedy = pack_sequences(lengths, capacity, "greedy")
    for algorithm in ("ffd", "bfd"):
        p = pack_sequences(lengths, capacity, algorithm)
        check_packing(p, lengths.tolist(), capacity)
        assert p.num_bins < greedy.num_bins
        assert p.num_bins <= p.min_bins + 1


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_inputs_of_every_kind_give_the_same_packing(algorithm):
    lengths = [7, 3, 0, 9, 9, 1, 4]
    want = pack_sequences(lengths, 10, algorithm)
    for form in (np.array(lengths, np.int32), np.array(lengths, np.uint16),
                 torch.tensor(lengths), tuple(lengths)):
        got = pack_sequences(form, 10, algorithm)
        np.testing.assert_array_equal(got.bin_ids, want.bin_ids)
    again = pack_sequences(lengths, 10, algorithm)
    np.testing.assert_array_equal(again.bin_ids, want.bin_ids)


@pytest.mark.parametrize("pack", IMPLS.values(), ids=IMPLS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_truncate_and_edges(pack, algorithm):
    p = pack([12, 3, 10], 10, algorithm, truncate=True)
    assert p.lengths.tolist() == [10, 3, 10]
    check_packing(p, [10, 3, 10], 10)
    empty = pack([], 10, algorithm)
    assert empty.num_bins == 0 and empty.bins() == [] and empty.efficiency == 0.0
    zeros = pack([0, 0, 0], 1, algorithm)
    assert zeros.num_bins == 1 and zeros.bin_ids.tolist() == [0, 0, 0]
    full = pack([10] * 5, 10, algorithm)
    assert full.num_bins == 5 and full.efficiency == 1.0


@pytest.mark.parametrize("pack", IMPLS.values(), ids=IMPLS)
def test_bad_input_names_the_argument(pack):
    with pytest.raises(ValueError, match=r"lengths\[1\] = -2 is negative"):
        pack([3, -2], 10)
    with pytest.raises(ValueError, match=r"lengths\[2\] = 11 is longer than capacity=10"):
        pack([3, 2, 11], 10)
    with pytest.raises(TypeError, match="lengths must hold integers"):
        pack([1.5, 2.0], 10)
    with pytest.raises(TypeError, match="lengths must hold integers"):
        pack(torch.tensor([1.0]), 10)
    with pytest.raises(ValueError, match="lengths must be 1-D"):
        pack([[1, 2]], 10)
    for capacity in (0, -1, 2.5, True, "8"):
        with pytest.raises(ValueError, match="capacity must be a positive int"):
            pack([1], capacity)
    with pytest.raises(ValueError, match="algorithm must be one of"):
        pack([1], 10, "first-fit")
    with pytest.raises(TypeError, match="lengths must hold integers, got a bool"):
        pack([3, True], 10)
    with pytest.raises(ValueError, match=r"lengths\[1\] = 18446744073709551615 does not fit "
                                         "int64"):
        pack(np.array([1, 2**64 - 1], np.uint64), 10)
    with pytest.raises(TypeError, match="truncate must be a bool"):
        pack([1], 10, "ffd", "yes")


@pytest.mark.parametrize("pack", IMPLS.values(), ids=IMPLS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_huge_lengths_pack_exactly_or_raise(pack, algorithm):
    """Lengths near 2^62: bins and loads stay exact (the loads went through float64, and
    int64 totals overflowed: greedy put 3 x 2^62 in one bin), and what could overflow is
    refused by name."""
    lengths = [2**60 + 1, 2**60 + 3, 2**60 - 1, 1, 2**59 + 7]
    capacity = 2**61 + 5
    p = pack(lengths, capacity, algorithm)
    want_ids, want_bins = ORACLES[algorithm](lengths, capacity)
    np.testing.assert_array_equal(p.bin_ids, want_ids)
    check_packing(p, lengths, capacity)
    exact = [sum(x for x, b in zip(lengths, want_ids) if b == k) for k in range(want_bins)]
    assert p.loads.tolist() == exact and p.tokens == sum(lengths)
    with pytest.raises(ValueError, match=r"capacity must be a positive int \(at most "
                                         r"2\*\*62 - 1\)"):
        pack([2**62] * 3, 2**62 + 10, algorithm)
    with pytest.raises(ValueError, match=r"lengths sum to \d+ tokens, more than 2\*\*62 - 1"):
        pack([2**62 - 1] * 3, 2**62 - 1, algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cost_does_not_grow_with_capacity(algorithm):
    """1000 lengths in bins of 2^40 tokens: no array sized by capacity (that took 8 TiB,
    and 7 GiB at 2^28). Scaling every length and the capacity by 2^29 keeps the bins (each
    algorithm only compares sums of lengths with capacity), so the large-capacity path is
    checked against the small-capacity one, and against the reference."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 2049, 1000)
    lengths[:4] = [0, 1, 2048, 2048]
    scale = 2**29
    small = pack_sequences(lengths, 2048, algorithm)
    pack_sequences(lengths[:10] * scale, 2048 * scale, algorithm)  # compiled first
    tracemalloc.start()
    try:
        big = pack_sequences(lengths * scale, 2048 * scale, algorithm)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20  # a few arrays of 1000 entries
    np.testing.assert_array_equal(big.bin_ids, small.bin_ids)
    ref = reference.pack_sequences(lengths * scale, 2048 * scale, algorithm)
    np.testing.assert_array_equal(big.bin_ids, ref.bin_ids)
    check_packing(big, (lengths * scale).tolist(), 2048 * scale)
    one = pack_sequences(lengths, 2**40, algorithm)
    np.testing.assert_array_equal(one.bin_ids, pack_sequences(lengths, int(lengths.sum()),
                                                              algorithm).bin_ids)
    assert one.num_bins == 1 and one.loads.tolist() == [lengths.sum()]


def test_pack_for_ranks_balances_every_rank():
    rng = np.random.default_rng(1)
    lengths = np.clip(rng.gamma(5, 20, 5000).round(), 10, 500).astype(np.int64)
    lengths[:40] = rng.integers(1000, 2048, 40)  # a few long documents: costly bins
    world = 8
    rp = pack_for_ranks(lengths, 2048, world)
    p = rp.packing
    steps = -(-p.num_bins // world)
    assert rp.assignment.shape == (steps, world)
    dealt = rp.assignment[rp.assignment >= 0]
    assert sorted(dealt.tolist()) == list(range(p.num_bins))  # every bin once
    assert (rp.assignment[:-1] >= 0).all()  # empty rows only in the last step
    # the per-rank totals are recomputed from the assignment
    attention = np.bincount(p.bin_ids, weights=p.lengths.astype(float) ** 2,
                            minlength=p.num_bins)
    for r in range(world):
        mine = rp.rank_bins(r)[rp.rank_bins(r) >= 0]
        assert rp.tokens[r] == p.loads[mine].sum()
        assert rp.attention[r] == pytest.approx(attention[mine].sum())
    assert rp.tokens.sum() == lengths.sum()
    assert rp.attention_imbalance < 0.01 and rp.token_imbalance < 0.01
    # dealing the same bins round robin in bin order balances far worse
    robin = np.array([attention[r::world].sum() for r in range(world)])
    assert robin.max() / robin.mean() - 1 > 5 * rp.attention_imbalance
    # per step: long-document bins cost up to 4x the others, so steps cannot be even, but
    # they are far closer than steps of shuffled bins (what a DistributedSampler gives)
    shuffled = rng.permutation(np.append(attention, np.zeros(steps * world - p.num_bins)))
    shuffled = shuffled.reshape(steps, world)
    shuffled_wait = shuffled.max(axis=1).sum() / shuffled.mean(axis=1).sum() - 1
    assert rp.step_imbalance < 0.15 and shuffled_wait > 3 * rp.step_imbalance


def test_pack_for_ranks_small_and_bad():
    rp = pack_for_ranks([6, 6, 6], 10, 4)
    assert rp.assignment.shape == (1, 4) and (rp.assignment < 0).sum() == 1
    assert rp.token_imbalance == pytest.approx(6 / (18 / 4) - 1)
    assert rp.step_imbalance == pytest.approx(36 / (108 / 4) - 1)
    with pytest.raises(ValueError, match="world_size must be a positive int"):
        pack_for_ranks([1], 10, 0)
