"""TokenLoader against its DataLoader reference: identical batches, exactly-once coverage,
disjoint ranks, exact resume, document fields, clear errors."""

import gc
import itertools
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_helpers import (all_windows, assert_same_batches, indexed_corpus, random_corpus,
                          window_ids)
from kernelsuite.attention import flash_attn_varlen_func
from kernelsuite.data import DocBatch, ReferenceTokenLoader, TokenLoader, write_shard

SIZES = [300, 37, 0, 1, 250, 129]  # an empty shard, a shard shorter than a window


@pytest.fixture
def corpus(tmp_path):
    return indexed_corpus(tmp_path, SIZES)


@pytest.mark.parametrize("loader", [TokenLoader, ReferenceTokenLoader])
@pytest.mark.parametrize("batch,seq_len,world", [(2, 8, 1), (3, 16, 2), (1, 7, 3)])
def test_each_window_once_per_epoch_over_all_ranks(corpus, loader, batch, seq_len, world):
    seen = []
    for rank in range(world):
        ld = loader(corpus, batch, seq_len, seed=3, rank=rank, world_size=world)
        batches = list(ld)
        assert len(batches) == len(ld) > 0
        rows = [w for b in batches for w in window_ids(b, SIZES, seq_len)]
        assert len(rows) == len(set(rows)) == len(ld) * batch
        seen.append(set(rows))
    union = set().union(*seen)
    assert sum(map(len, seen)) == len(union)  # ranks are disjoint
    windows = all_windows(SIZES, seq_len)
    assert union <= windows
    # only the remainder that cannot fill a batch on every rank is dropped
    assert len(windows) - len(union) == len(windows) % (world * batch)


def test_exactly_once_when_batches_divide(tmp_path):
    sizes = [8 * 6 + 1, 8 * 10 + 1]  # 16 windows of 8 tokens
    paths = indexed_corpus(tmp_path, sizes)
    for world, batch in [(1, 16), (2, 4), (4, 2)]:
        rows = [w for r in range(world)
                for b in TokenLoader(paths, batch, 8, rank=r, world_size=world)
                for w in window_ids(b, sizes, 8)]
        assert sorted(rows) == sorted(all_windows(sizes, 8))


def test_rows_are_windows_with_shifted_targets(corpus):
    for x, y in TokenLoader(corpus, 4, 10, seed=1):
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (4, 10)
        assert x.is_contiguous() and y.is_contiguous()
        assert torch.equal(y, x + 1)  # the indexed corpus: the next token is i + 1


CONFIGS = [dict(), dict(shuffle=False), dict(seed=7, rank=1, world_size=2),
           dict(eos_id=3), dict(eos_id=0, shuffle=False, rank=2, world_size=3)]


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_identical_to_reference(tmp_path, dtype, config):
    paths = random_corpus(tmp_path, SIZES, vocab=6, dtype=dtype)  # EOS ids are frequent
    for prefetch in (0, 3):
        ours = TokenLoader(paths, 3, 9, prefetch=prefetch, **config)
        ref = ReferenceTokenLoader(paths, 3, 9, **config)
        for epoch in range(2):
            a, b = list(ours), list(ref)
            assert_same_batches(a, b)
            assert ours.epoch == ref.epoch == epoch + 1


def test_epochs_and_seeds_change_the_order(corpus):
    def order(seed, epoch):
        ld = TokenLoader(corpus, 2, 8, seed=seed)
        ld.set_epoch(epoch)
        return [w for b in ld for w in window_ids(b, SIZES, 8)]
    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert sorted(order(0, 0)) == sorted(order(0, 1))
    ld = TokenLoader(corpus, 2, 8, shuffle=False)
    assert [w for b in ld for w in window_ids(b, SIZES, 8)][:3] == [(0, 0), (0, 1), (0, 2)]


def test_finishing_an_epoch_moves_to_the_next(corpus):
    ld = TokenLoader(corpus, 2, 8)
    first = list(ld)
    assert (ld.epoch, ld.batch) == (1, 0)
    ld.set_epoch(1)  # no-op: already there
    second = list(ld)
    ld.set_epoch(1)
    assert_same_batches(list(ld), second)
    ld.set_epoch(0)
    assert_same_batches(list(ld), first)


def take(loader, n):
    """The next n batches, across epochs."""
    out = []
    while len(out) < n:
        out += itertools.islice(loader, n - len(out))
    return out


@pytest.mark.parametrize("loader", [TokenLoader, ReferenceTokenLoader])
@pytest.mark.parametrize("eos_id", [None, 5])
def test_exact_resume(tmp_path, loader, eos_id):
    paths = random_corpus(tmp_path, SIZES, vocab=8)
    kw = dict(seed=11, eos_id=eos_id, rank=1, world_size=2)
    n = len(loader(paths, 2, 8, **kw))
    expected = take(loader(paths, 2, 8, **kw), 2 * n)  # two epochs
    for stop in [0, 1, n // 2, n - 1, n, n + 1, 2 * n - 1]:
        ld = loader(paths, 2, 8, **kw)
        take(ld, stop)
        state = pickle.loads(pickle.dumps(ld.state_dict()))  # checkpoints are pickled
        assert (state["epoch"], state["batch"]) == divmod(stop, n)
        for cls in (TokenLoader, ReferenceTokenLoader):  # either one resumes the other
            fresh = cls(paths, 2, 8, **dict(kw, rank=0))  # saved on rank 1, loaded on 0
            fresh.load_state_dict(state)
            assert (fresh.epoch, fresh.batch) == divmod(stop, n)
            fresh = cls(paths, 2, 8, **kw)
            fresh.load_state_dict(state)
            assert_same_batches(take(fresh, 2 * n - stop), expected[stop:])


def test_resume_with_set_epoch_in_the_loop(corpus):
    """The usual loop calls set_epoch(epoch) first; a resumed position must survive it."""
    ld = TokenLoader(corpus, 2, 8)
    ld.set_epoch(2)
    it = iter(ld)
    next(it)
    state = ld.state_dict()
    rest = list(it)
    resumed = TokenLoader(corpus, 2, 8)
    resumed.load_state_dict(state)
    resumed.set_epoch(state["epoch"])
    assert_same_batches(list(resumed), rest)


def test_state_dict_is_checked(corpus):
    ld = TokenLoader(corpus, 2, 8)
    state = ld.state_dict()
    for key, value in [("seq_len", 9), ("batch_size", 3), ("world_size", 2), ("seed", 1),
                       ("shuffle", False), ("num_windows", 1), ("eos_id", 0)]:
        with pytest.raises(ValueError, match=key):
            ld.load_state_dict(dict(state, **{key: value}))
    with pytest.raises(ValueError, match="out of range"):
        ld.load_state_dict(dict(state, batch=len(ld) + 1))
    with pytest.raises(ValueError, match="lacks"):
        ld.load_state_dict({"epoch": 0})


@pytest.mark.parametrize("key,value", [
    ("epoch", True), ("batch", True), ("epoch", 1.0), ("epoch", 2**63), ("batch", "1"),
    ("batch_size", 2.0), ("seq_len", 8.0), ("world_size", True), ("seed", False),
    ("shuffle", 1), ("eos_id", False), ("num_windows", float("nan")), ("format", 2.0)])
def test_state_dict_types_are_checked(corpus, key, value):
    """A value equal to the loader's but of another kind (True == 1, 4.0 == 4) is not the
    same setting: a state holding it was not made by state_dict()."""
    ld = TokenLoader(corpus, 2, 8)
    state = ld.state_dict()
    with pytest.raises(ValueError, match=key if key not in ("epoch", "batch") else "epoch"):
        ld.load_state_dict(dict(state, **{key: value}))
    assert (ld.epoch, ld.batch) == (0, 0)
    with pytest.raises(TypeError, match="state_dict must be a dict"):
        ld.load_state_dict([("epoch", 0)])


@pytest.mark.parametrize("loader", [TokenLoader, ReferenceTokenLoader])
def test_state_dict_names_the_corpus(tmp_path, loader):
    """The state carries a fingerprint of each shard (count, dtype, a hash of its ends), so
    a state saved over another corpus of the same size, or over the same shards in another
    order, is refused naming what differs."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    paths = random_corpus(tmp_path / "a", [200, 200, 120], seed=0)
    other = random_corpus(tmp_path / "b", [200, 200, 120], seed=1)  # same sizes
    ld = loader(paths, 2, 8)
    next(iter(ld))
    state = ld.state_dict()
    with pytest.raises(ValueError, match=r"shard 0 \(.*b/shard_000.bin\) is not the shard .* "
                                         r"content hash differs"):
        loader(other, 2, 8).load_state_dict(state)
    with pytest.raises(ValueError, match=r"shard 0 \(.*shard_001.bin\) was shard 1 "
                                         r"\(shard_001.bin\) .* another order"):
        loader([paths[1], paths[0], paths[2]], 2, 8).load_state_dict(state)
    with pytest.raises(ValueError, match="lists 3 shards but this loader has 2"):
        loader(paths[:2], 2, 8).load_state_dict(state)
    with pytest.raises(ValueError, match="tokens 120 then, 121 now"):
        grown = write_shard(tmp_path / "c.bin", np.append(open_shard_tokens(paths[2]), 1))
        loader([paths[0], paths[1], grown], 2, 8).load_state_dict(state)
    with pytest.raises(ValueError, match="lacks.*corpus"):
        ld.load_state_dict({k: v for k, v in state.items() if k != "corpus"})
    with pytest.raises(ValueError, match="not a list of shard fingerprints"):
        ld.load_state_dict(dict(state, corpus=[1, 2, 3]))
    for tokens in (200.0, True):  # equal to 200 (or 1) but not a token count
        corpus = [dict(state["corpus"][0], tokens=tokens)] + state["corpus"][1:]
        with pytest.raises(ValueError, match="not a list of shard fingerprints"):
            ld.load_state_dict(dict(state, corpus=corpus))
    moved = tmp_path / "moved"  # the same corpus in another directory resumes
    moved.mkdir()
    for p in paths:
        os.link(p, moved / p.name)
    fresh = loader(sorted(moved.iterdir()), 2, 8)
    fresh.load_state_dict(state)
    assert (fresh.epoch, fresh.batch) == (0, 1)


def open_shard_tokens(path):
    from kernelsuite.data import open_shard
    return np.array(open_shard(path))


def test_set_epoch_range(corpus):
    ld = TokenLoader(corpus, 2, 8)
    for bad in (True, -1, 2**63, 1.0):
        with pytest.raises(ValueError, match="epoch must be an int"):
            ld.set_epoch(bad)


_TRUNCATE = textwrap.dedent("""
    import os, sys
    import numpy as np
    from kernelsuite.data import ReferenceTokenLoader, TokenLoader, write_shard
    path = write_shard(sys.argv[1], np.arange(40000) % 50, "uint16")
    for cls, kw in [(TokenLoader, {}), (ReferenceTokenLoader, {}),
                    (ReferenceTokenLoader, dict(num_workers=1))]:
        write_shard(path, np.arange(40000) % 50, "uint16")
        ld = cls([path], 2, 8, shuffle=False, **kw)
        os.truncate(path, 1000)  # the file shrinks while it is open
        try:
            list(ld)
        except OSError as e:
            print(cls.__name__, kw, "OSError", str(e).replace("\\n", " "), flush=True)
        else:
            print(cls.__name__, kw, "no error", flush=True)
""")


def test_truncated_shard_raises_in_both_loaders(tmp_path):
    """ReferenceTokenLoader read windows through the memory map: a shard truncated while
    open killed the process with SIGBUS. Both loaders now raise the same OSError (run in a
    subprocess so that a SIGBUS cannot kill pytest)."""
    out = subprocess.run([sys.executable, "-c", _TRUNCATE, str(tmp_path / "s.bin")],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr[-2000:])
    lines = out.stdout.splitlines()
    assert len(lines) == 3, out.stdout
    for line in lines:
        assert "OSError" in line and "s.bin: short read; the shard changed on disk" in line


def test_reference_num_workers_is_checked(corpus):
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="num_workers must be an int >= 0"):
            ReferenceTokenLoader(corpus, 2, 8, num_workers=bad)


def test_stale_iterators_raise(corpus):
    ld = TokenLoader(corpus, 2, 8)
    it = iter(ld)
    next(it)
    ld.set_epoch(3)
    with pytest.raises(RuntimeError, match="stale"):
        next(it)
    it2 = iter(ld)
    iter(ld)
    with pytest.raises(RuntimeError, match="stale"):
        next(it2)


def test_batches_are_not_overwritten(corpus):
    ld = TokenLoader(corpus, 2, 8, prefetch=4)
    batches = list(ld)
    assert_same_batches(batches, list(ReferenceTokenLoader(corpus, 2, 8)))


def test_background_thread_stops(corpus):
    ld = TokenLoader(corpus, 1, 4, prefetch=2)
    it = iter(ld)
    next(it)
    thread = it.thread
    del it
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert (ld.epoch, ld.batch) == (0, 1)


def test_errors_in_the_thread_reach_the_caller(tmp_path):
    paths = random_corpus(tmp_path, [4000])
    ld = TokenLoader(paths, 2, 8, prefetch=2, shuffle=False)
    os.truncate(paths[0], 1000)  # the file shrinks after it was opened
    with pytest.raises(OSError, match="shard_000.bin: short read"):
        list(ld)


def test_documents(tmp_path):
    path = write_shard(tmp_path / "d.bin", [5, 1, 2, 0, 3, 0, 0, 4, 5, 6, 0, 7, 8, 9, 1, 0, 2])
    for cls in (TokenLoader, ReferenceTokenLoader):
        b = next(iter(cls([path], 2, 8, eos_id=0, shuffle=False)))
        assert isinstance(b, DocBatch)
        assert b.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 0, 0], [0, 1, 2, 0, 1, 2, 3, 4]]
        assert b.cu_seqlens.dtype == torch.int32
        assert b.cu_seqlens.tolist() == [0, 4, 6, 7, 8, 11, 16]
        assert b.max_seqlen == 5


def test_documents_feed_varlen_attention(tmp_path):
    """cu_seqlens keeps attention inside each document: the varlen call over the packed
    batch equals attention run on each document alone."""
    paths = random_corpus(tmp_path, [400], vocab=5)
    b = next(iter(TokenLoader(paths, 2, 24, eos_id=1, seed=2)))
    assert len(b.cu_seqlens) > 4  # several documents per row
    emb = torch.randn(5, 2, 16, dtype=torch.float64)
    q = emb[b.x.flatten()]
    out = flash_attn_varlen_func(q, q, q, b.cu_seqlens, b.cu_seqlens, b.max_seqlen,
                                 b.max_seqlen, causal=True, backend="torch")
    cu = b.cu_seqlens.tolist()
    for s, e in zip(cu[:-1], cu[1:]):
        doc = q[s:e].unsqueeze(0)
        ref = torch.nn.functional.scaled_dot_product_attention(
            *(doc.transpose(1, 2),) * 3, is_causal=True).transpose(1, 2)
        torch.testing.assert_close(out[s:e], ref[0])
    pos = b.position_ids.flatten()
    assert torch.equal(pos[b.cu_seqlens[:-1].long()], torch.zeros(len(cu) - 1, dtype=torch.long))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(batch_size=0), ValueError, "batch_size must be a positive int"),
    (dict(seq_len=True), ValueError, "seq_len must be a positive int"),
    (dict(rank=1), ValueError, "rank is given but world_size is not"),
    (dict(world_size=2), ValueError, "world_size is given but rank is not"),
    (dict(rank=2, world_size=2), ValueError, r"rank must be an int in \[0, world_size=2\)"),
    (dict(pin_memory=True), ValueError, "pin_memory=True needs a CUDA device"),
    (dict(device="nonsense"), ValueError, "device 'nonsense'"),
    (dict(device="meta"), ValueError, "device='meta' is not supported"),
    (dict(device=torch.device("meta")), ValueError, "is not supported"),
    (dict(device=3.5), ValueError, "device 3.5"),
    (dict(shuffle="no"), TypeError, "shuffle must be a bool"),
    (dict(shuffle=None), TypeError, "shuffle must be a bool"),
    (dict(pin_memory="yes"), TypeError, "pin_memory must be None or a bool"),
    (dict(seed=2**64), ValueError, r"seed must be an int in \[-2\*\*63, 2\*\*63\)"),
    (dict(prefetch=-1), ValueError, "prefetch must be an int >= 0"),
    (dict(eos_id=2**32), ValueError, "eos_id must be None or an int"),
    (dict(seed=1.5), TypeError, "seed must be an int"),
    (dict(batch_size=1000), ValueError, "no full batch"),
    (dict(paths=[]), ValueError, "paths is empty"),
    (dict(paths=[1]), TypeError, "paths must hold str"),
])
@pytest.mark.parametrize("loader", [TokenLoader, ReferenceTokenLoader])
def test_bad_arguments(corpus, loader, kwargs, error, match):
    args = dict(paths=corpus, batch_size=2, seq_len=8)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        loader(**args)


def test_cuda_device_without_cuda(corpus):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        TokenLoader(corpus, 2, 8, device="cuda")


def test_mixed_dtypes_rejected(tmp_path):
    a = write_shard(tmp_path / "a.bin", np.arange(100), "uint16")
    b = write_shard(tmp_path / "b.bin", np.arange(100), "uint32")
    with pytest.raises(ValueError, match="mix token dtypes"):
        TokenLoader([a, b], 2, 8)


@pytest.mark.gpu
@pytest.mark.parametrize("pin_memory", [True, False])
def test_cuda_batches_match_cpu(tmp_path, pin_memory):
    paths = random_corpus(tmp_path, [5000, 3000], vocab=9)
    for eos_id in (None, 4):
        gpu = TokenLoader(paths, 4, 64, device="cuda", pin_memory=pin_memory, eos_id=eos_id)
        cpu = ReferenceTokenLoader(paths, 4, 64, eos_id=eos_id)
        got = list(gpu)
        assert all(t.is_cuda for b in got for t in b if torch.is_tensor(t))
        torch.cuda.synchronize()
        assert_same_batches([type(b)(*[t.cpu() if torch.is_tensor(t) else t for t in b])
                             for b in got], list(cpu))


# Property tests: random corpora, lengths, batch sizes and world sizes.
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(0, 200), min_size=1, max_size=5),
       seq_len=st.integers(1, 40), batch=st.integers(1, 6), world=st.integers(1, 3),
       seed=st.integers(0, 2**31), stop=st.integers(0, 50))
def test_properties(tmp_path_factory, sizes, seq_len, batch, world, seed, stop):
    directory = tmp_path_factory.mktemp("corpus")
    paths = indexed_corpus(directory, sizes)
    windows = all_windows(sizes, seq_len)
    if len(windows) // world // batch == 0:
        with pytest.raises(ValueError, match="no full batch"):
            TokenLoader(paths, batch, seq_len, rank=0, world_size=world)
        return
    seen = set()
    for rank in range(world):
        kw = dict(seed=seed, rank=rank, world_size=world)
        ours = list(TokenLoader(paths, batch, seq_len, **kw))
        assert_same_batches(ours, list(ReferenceTokenLoader(paths, batch, seq_len, **kw)))
        rows = [w for b in ours for w in window_ids(b, sizes, seq_len)]
        assert len(set(rows)) == len(rows) and not seen & set(rows)
        seen |= set(rows)
        # resume after `stop` batches (modulo the epoch) gives the rest
        ld = TokenLoader(paths, batch, seq_len, **kw)
        k = stop % len(ours)
        for _ in itertools.islice(ld, k):
            pass
        resumed = TokenLoader(paths, batch, seq_len, **kw)
        resumed.load_state_dict(ld.state_dict())
        assert_same_batches(list(resumed), ours[k:])
    assert seen <= windows and len(windows) - len(seen) < world * batch
