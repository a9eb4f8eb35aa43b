"""Property tests over the data path: shards written by ShardWriter read back unchanged,
TokenLoader equals its DataLoader reference, a saved state resumes exactly, garbage
arguments and states raise ValueError/TypeError (and valid ones are taken), and the shards
CLI keeps every byte of a text file without EOS (or cuts documents as documented with EOS,
or refuses a non-UTF-8 file naming it, leaving nothing behind)."""

import contextlib
import io
import itertools
import math
import os
import pickle
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from data_helpers import assert_same_batches
from kernelsuite.cli import main
from kernelsuite.data import ReferenceTokenLoader, TokenLoader, open_shard, write_shard
from kernelsuite.data.build import ShardWriter
from kernelsuite.data.shards import TEMP_PREFIX

LOADERS = [TokenLoader, ReferenceTokenLoader]
TOP = {"uint16": 2**16 - 1, "uint32": 2**32 - 1}


@contextlib.contextmanager
def workdir():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def write_corpus(directory, sizes, dtype, vocab, seed):
    rng = np.random.default_rng(seed)
    return [write_shard(directory / f"s{i}.bin", rng.integers(0, vocab, n), dtype)
            for i, n in enumerate(sizes)]


def take(loader, n):
    """The next n batches, across epochs."""
    out = []
    while len(out) < n:
        out += itertools.islice(loader, n - len(out))
    return out


# --- shards ---------------------------------------------------------------------------

as_kinds = st.sampled_from([list, np.array, lambda a: np.array(a, np.uint64), torch.tensor])


@settings(max_examples=100, deadline=None)
@given(dtype=st.sampled_from(["uint16", "uint32"]), shard_tokens=st.integers(1, 40),
       data=st.data(), kind=as_kinds)
def test_shard_writer_round_trip(dtype, shard_tokens, data, kind):
    """Any stream of arrays comes back as the same tokens, cut into full shards and one
    shorter last; ids that do not fit raise ValueError and leave no file behind."""
    fits = st.integers(0, TOP[dtype])
    wide = st.one_of(fits, st.integers(TOP[dtype] + 1, 2**40)) if data.draw(st.booleans()) \
        else fits
    arrays = data.draw(st.lists(st.lists(wide, max_size=30), max_size=5))
    flat = [t for a in arrays for t in a]
    ok = all(t <= TOP[dtype] for t in flat)
    with workdir() as d:
        out = d / "out"
        if not ok:
            with pytest.raises(ValueError, match=f"does not fit in {dtype}"):
                with ShardWriter(out, shard_tokens, dtype) as writer:
                    for a in arrays:
                        writer.add(kind(a) if a else np.zeros(0, np.int64))
            assert not out.exists()
            return
        with ShardWriter(out, shard_tokens, dtype) as writer:
            for a in arrays:
                writer.add(kind(a) if a else np.zeros(0, np.int64))
        shards = [open_shard(p) for p in writer.paths]
        assert sorted(os.listdir(out)) == [p.name for p in writer.paths]  # no temp left
        assert all(s.dtype == np.dtype(dtype) for s in shards)
        got = np.concatenate(shards).tolist() if shards else []
        assert got == flat
        assert len(shards) == math.ceil(len(flat) / shard_tokens)
        assert all(len(s) == shard_tokens for s in shards[:-1])
        assert not shards or 1 <= len(shards[-1]) <= shard_tokens


# --- loader against reference, resume --------------------------------------------------

corpora = st.fixed_dictionaries(dict(
    sizes=st.lists(st.integers(0, 160), min_size=1, max_size=4),
    dtype=st.sampled_from(["uint16", "uint32"]), vocab=st.integers(1, 12),
    seed=st.integers(0, 1000)))


def config(data, corpus):
    world = data.draw(st.integers(1, 3))
    return dict(batch_size=data.draw(st.integers(1, 4)), seq_len=data.draw(st.integers(1, 24)),
                seed=data.draw(st.integers(-2**63, 2**63 - 1)), shuffle=data.draw(st.booleans()),
                world_size=world, rank=data.draw(st.integers(0, world - 1)),
                eos_id=data.draw(st.one_of(st.none(), st.integers(0, corpus["vocab"]))))


def windows(sizes, seq_len):
    return sum(max(0, (n - 1) // seq_len) for n in sizes)


@settings(max_examples=150, deadline=None)
@given(corpus=corpora, data=st.data(), prefetch=st.integers(0, 3), epoch=st.integers(0, 3))
def test_loader_equals_reference(corpus, data, prefetch, epoch):
    kw = config(data, corpus)
    with workdir() as d:
        paths = write_corpus(d, **corpus)
        if windows(corpus["sizes"], kw["seq_len"]) < kw["batch_size"] * kw["world_size"]:
            for cls in LOADERS:
                with pytest.raises(ValueError, match="no full batch"):
                    cls(paths, **kw)
            return
        ours, ref = TokenLoader(paths, prefetch=prefetch, **kw), ReferenceTokenLoader(paths, **kw)
        ours.set_epoch(epoch)
        ref.set_epoch(epoch)
        a, b = list(ours), list(ref)
        assert len(a) == len(ours) > 0
        assert_same_batches(a, b)
        assert (ours.epoch, ours.batch) == (ref.epoch, ref.batch) == (epoch + 1, 0)
        ours.close()


@settings(max_examples=100, deadline=None)
@given(corpus=corpora, data=st.data())
def test_resume_anywhere(corpus, data):
    """A state saved after any number of batches (across epochs, pickled, loaded on any
    rank into either loader) continues with exactly the batches that would have come."""
    kw = config(data, corpus)
    with workdir() as d:
        paths = write_corpus(d, **corpus)
        if windows(corpus["sizes"], kw["seq_len"]) < kw["batch_size"] * kw["world_size"]:
            return
        saver, loader = data.draw(st.sampled_from(LOADERS)), data.draw(st.sampled_from(LOADERS))
        n = len(saver(paths, **kw))
        stop, more = data.draw(st.integers(0, 2 * n)), data.draw(st.integers(1, n + 1))
        expected = take(TokenLoader(paths, **kw), stop + more)
        ld = saver(paths, **kw)
        take(ld, stop)
        state = pickle.loads(pickle.dumps(ld.state_dict()))
        other_rank = data.draw(st.integers(0, kw["world_size"] - 1))
        fresh = loader(paths, **dict(kw, rank=other_rank))
        fresh.load_state_dict(state)
        assert (fresh.epoch, fresh.batch) == divmod(stop, n)
        fresh = loader(paths, **kw)
        fresh.load_state_dict(state)
        fresh.set_epoch(fresh.epoch)  # the usual loop's call keeps the position
        assert_same_batches(take(fresh, more), expected[stop:])


@settings(max_examples=80, deadline=None)
@given(corpus=corpora, change=st.sampled_from(["token", "swap", "drop", "append", "dtype"]),
       data=st.data())
def test_state_refuses_another_corpus(corpus, change, data):
    """Any change to a corpus of small shards (every byte is under the fingerprint's hash)
    makes a saved state refused with a ValueError."""
    sizes = [n + 9 for n in corpus["sizes"]]  # at least one window of 8 in every shard
    kw = dict(batch_size=1, seq_len=8)
    with workdir() as d:
        (d / "new").mkdir()
        paths = write_corpus(d, sizes, corpus["dtype"], corpus["vocab"], corpus["seed"])
        state = TokenLoader(paths, **kw).state_dict()
        tokens = [np.array(open_shard(p)) for p in paths]
        i = data.draw(st.integers(0, len(paths) - 1))
        dtype = corpus["dtype"]
        if change == "token":
            j = data.draw(st.integers(0, len(tokens[i]) - 1))
            tokens[i][j] = (int(tokens[i][j]) + 1) % (TOP[dtype] + 1)
        elif change == "swap":
            j = data.draw(st.integers(0, len(paths) - 1))
            if np.array_equal(tokens[i], tokens[j]):
                return  # the same corpus
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif change == "drop":
            if len(tokens) == 1:
                return
            del tokens[i]
        elif change == "append":
            tokens[i] = np.append(tokens[i], 0).astype(tokens[i].dtype)
        else:
            dtype = "uint32" if dtype == "uint16" else "uint16"
        other = [write_shard(d / "new" / f"s{k}.bin", t, dtype) for k, t in enumerate(tokens)]
        with pytest.raises(ValueError, match="shard|corpus|num_windows"):
            data.draw(st.sampled_from(LOADERS))(other, **kw).load_state_dict(state)


# --- garbage arguments and states -----------------------------------------------------

garbage = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True), st.text(max_size=4), st.lists(st.integers(0, 3), max_size=2),
    st.sampled_from([np.int32(3), np.int64(-1), np.uint8(1), np.float64(2.0), np.bool_(True),
                     torch.tensor(2), b"cpu", "cpu", "cpu:0", "meta", "cuda", "cuda:0",
                     "cuda:7", "mps", "xla", torch.device("meta"), 2**63, -2**63, 2**63 - 1,
                     65535, 65536, object()]))


def is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def cuda_ok(dev):
    return torch.cuda.is_available() and (dev.index is None
                                          or dev.index < torch.cuda.device_count())


def expected_device(value):
    """The device a valid `device` argument means, or None when it is not valid."""
    try:
        dev = torch.device(value)
    except Exception:
        return None
    return dev if dev.type == "cpu" or (dev.type == "cuda" and cuda_ok(dev)) else None


def valid(name, value):
    """Is `value` a valid `name` argument? (A valid batch_size or seq_len may still leave
    no full batch: a ValueError saying so.)"""
    if name in ("batch_size", "seq_len"):
        return is_int(value) and value >= 1
    if name == "seed":
        return is_int(value) and -2**63 <= value < 2**63
    if name == "shuffle":
        return isinstance(value, (bool, np.bool_))
    if name == "prefetch":
        return is_int(value) and value >= 0
    if name == "eos_id":
        return value is None or (is_int(value) and 0 <= value <= 2**16 - 1)
    if name == "device":
        return expected_device(value) is not None
    if name == "pin_memory":
        return value is None or value is False or value is np.False_
    raise AssertionError(name)


ARGS = ["batch_size", "seq_len", "seed", "shuffle", "prefetch", "eos_id", "device",
        "pin_memory"]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz_corpus")
    return write_corpus(d, [200, 57, 1], "uint16", 9, 0)


@settings(max_examples=400, deadline=None)
@given(cls=st.sampled_from(LOADERS), name=st.sampled_from(ARGS), value=garbage)
def test_garbage_arguments(small_corpus, cls, name, value):
    """Every value is either taken as the valid value it is, or refused with a
    ValueError/TypeError naming the argument: never another exception, never a silent
    reinterpretation (True as 1, 'no' as True, 'meta' as the CPU)."""
    kw = {"batch_size": 2, "seq_len": 8, name: value}
    if valid(name, value):
        try:
            ld = cls(small_corpus, **kw)
        except ValueError as e:
            assert name in ("batch_size", "seq_len") and "no full batch" in str(e)
            return
        held = {"device": ld.device, "pin_memory": ld.pin_memory}.get(name, getattr(ld, name))
        want = (expected_device(value) if name == "device" else
                bool(value) if name in ("shuffle", "pin_memory") else
                None if value is None else int(value))
        assert held == want and type(held) is type(want)
    else:
        with pytest.raises((ValueError, TypeError)) as err:
            cls(small_corpus, **kw)
        assert name in str(err.value) or (name == "device" and "CUDA" in str(err.value))


@settings(max_examples=150, deadline=None)
@given(cls=st.sampled_from(LOADERS), rank=garbage, world=garbage)
def test_garbage_rank_and_world_size(small_corpus, cls, rank, world):
    ok = ((rank is None and world is None) or (rank is None and is_int(world) and world == 1)
          or (is_int(rank) and is_int(world) and 0 <= rank < world))
    if ok:
        try:
            ld = cls(small_corpus, 2, 8, rank=rank, world_size=world)
        except ValueError as e:
            assert "no full batch" in str(e)
            return
        assert (ld.rank, ld.world_size) == (0 if rank is None else rank, 1 if world is None
                                            else world)
    else:
        with pytest.raises((ValueError, TypeError), match="rank|world_size"):
            cls(small_corpus, 2, 8, rank=rank, world_size=world)


def same(saved, ours):
    """The reference meaning of 'the same setting': the same value of the same kind."""
    if ours is None or isinstance(ours, bool):
        return saved is ours or (isinstance(saved, np.bool_) and bool(saved) is ours)
    return is_int(saved) and saved == ours


@settings(max_examples=400, deadline=None)
@given(cls=st.sampled_from(LOADERS), how=st.sampled_from(["set", "drop", "corpus", "whole"]),
       key=st.sampled_from(["format", "epoch", "batch", "rank", "seed", "shuffle",
                            "world_size", "batch_size", "seq_len", "num_windows", "eos_id",
                            "corpus", "extra"]),
       field=st.sampled_from(["name", "tokens", "dtype", "hash", "gone"]),
       shard=st.integers(0, 2), value=garbage)
def test_garbage_states(small_corpus, cls, how, key, field, shard, value):
    """load_state_dict takes a state that means the same position over the same corpus
    and settings, and refuses any other with ValueError/TypeError, leaving the loader
    where it was."""
    ld = cls(small_corpus, 2, 8, eos_id=3)
    for _ in itertools.islice(ld, 1):
        pass
    good = ld.state_dict()
    state = pickle.loads(pickle.dumps(good))
    if how == "whole":
        state = value
        accept = False
    elif how == "drop":
        state.pop(key, None)
        accept = key in ("rank", "extra")
    elif how == "corpus":
        entry = state["corpus"][shard]
        if field == "gone":
            del state["corpus"][shard]
            accept = False
        else:
            entry[field] = value
            # the name is informational: a corpus moved or renamed still resumes
            accept = field == "name" or (field == "tokens" and same(value, good["corpus"]
                                                                      [shard]["tokens"]))
    else:
        state[key] = value
        if key in ("rank", "extra"):
            accept = True
        elif key == "corpus":
            accept = False
        elif key == "epoch":
            accept = is_int(value) and 0 <= value < 2**63
        elif key == "batch":
            accept = is_int(value) and 0 <= value <= len(ld)
        else:
            accept = same(value, good[key])
    fresh = cls(small_corpus, 2, 8, eos_id=3)
    if accept:
        fresh.load_state_dict(state)
        epoch, batch = state["epoch"], state["batch"]
        assert (fresh.epoch, fresh.batch) == ((epoch + 1, 0) if batch == len(ld)
                                              else (epoch, batch))
    else:
        with pytest.raises((ValueError, TypeError)):
            fresh.load_state_dict(state)
        assert (fresh.epoch, fresh.batch) == (0, 0)


# --- the shards CLI on text -----------------------------------------------------------

PIECES = [b"\n", b"\n", b"\r\n", b" ", b"\t", b"a", b"word", "\u00e9".encode(),
          "\u2028".encode(), b"\x0c", b"\xff", b"\xe9"]  # the last two: not UTF-8 alone
files = st.lists(st.lists(st.sampled_from(PIECES), max_size=25).map(b"".join),
                 min_size=1, max_size=3)


def lines(text):
    return [line for line in re.split(r"(?<=\n)", text) if line]


def expected_documents(text, mode):
    """The documents each followed by EOS: the reference reading of the help text."""
    if mode == "--doc-per-file":
        return [text] if text.strip() else []
    if mode == "--doc-per-line":
        return [line.rstrip("\r\n") for line in lines(text) if line.strip()]
    groups = itertools.groupby(lines(text), key=lambda line: bool(line.strip()))
    return ["".join(g).rstrip("\r\n") for text_, g in groups if text_]


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


@settings(max_examples=200, deadline=None)
@given(contents=files, mode=st.sampled_from([None, "--doc-per-line", "--doc-per-file"]),
       eos=st.sampled_from([None, 0, 300]), shard_tokens=st.integers(1, 64))
def test_cli_text(contents, mode, eos, shard_tokens):
    with workdir() as d:
        paths = []
        for i, content in enumerate(contents):
            paths.append(d / f"f{i}.txt")
            paths[-1].write_bytes(content)
        out = d / "out"
        argv = ["shards", str(out), "--text", *map(str, paths),
                "--shard-tokens", str(shard_tokens)]
        argv += [mode] if mode else []
        argv += ["--eos-id", str(eos)] if eos is not None else []
        code, err = run_cli(argv)
        bad = []
        for p, content in zip(paths, contents):
            try:
                content.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(p)
        if bad:  # one line naming the first bad file; nothing written
            assert code == 2 and err.count("\n") == 1, err
            assert err.startswith(f"kernelsuite shards: error: {bad[0]}: not UTF-8 text")
            assert not out.exists()
            return
        assert code == 0, err
        shards = sorted(out.glob("*.bin"))
        assert not list(out.glob(TEMP_PREFIX + "*"))
        got = np.concatenate([open_shard(p) for p in shards]).tolist() if shards else []
        if eos is None:  # every byte, in order
            assert bytes(got) == b"".join(contents)
        else:
            want = []
            for content in contents:
                for doc in expected_documents(content.decode(), mode):
                    want += list(doc.encode()) + [eos]
            assert got == want


npy_arrays = st.lists(st.tuples(
    st.sampled_from(["int8", "int64", "uint16", "uint32", "uint64", "float32", "bool"]),
    st.sampled_from([(0,), (1,), (7,), (40,), (), (2, 3), (0, 2)]),
    st.sampled_from([1, 200, 2**16, 2**20]), st.booleans()), min_size=1, max_size=3)


@settings(max_examples=100, deadline=None)
@given(arrays=npy_arrays, dtype=st.sampled_from(["uint16", "uint32"]),
       shard_tokens=st.integers(1, 50), existing=st.booleans())
def test_cli_npy(arrays, dtype, shard_tokens, existing):
    """.npy inputs: either every id lands in the shards in order, or exit 2 with one line
    naming the bad file and no new file left (what was in OUT before stays)."""
    rng = np.random.default_rng(0)
    with workdir() as d:
        paths, ok, flat = [], True, []
        for k, (kind, shape, high, negative) in enumerate(arrays):
            low = -high if negative and kind.startswith("int") else 0
            a = rng.integers(low, high, shape).astype(kind)
            paths.append(d / f"a{k}.npy")
            np.save(paths[-1], a)
            fits = (a.ndim == 1 and kind != "bool"
                    and (a.size == 0 or (kind.startswith(("int", "uint")) and a.min() >= 0
                                         and a.max() <= TOP[dtype])))
            if ok and not fits:
                first_bad = paths[-1]
            ok = ok and fits
            flat += a.tolist() if fits else []
        out = d / "out"
        if existing:
            out.mkdir()
            (out / "keep.txt").write_text("mine")
        code, err = run_cli(["shards", str(out), "--npy", *map(str, paths), "--dtype", dtype,
                             "--shard-tokens", str(shard_tokens)])
        if ok:
            assert code == 0, err
            shards = sorted(out.glob("*.bin"))
            got = np.concatenate([open_shard(p) for p in shards]).tolist() if shards else []
            assert got == flat
        else:
            assert code == 2 and err.count("\n") == 1 and str(first_bad) in err, err
            assert sorted(os.listdir(out)) == ["keep.txt"] if existing else not out.exists()
