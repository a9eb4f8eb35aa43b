"""Token shards: format round trip, clear errors for bad files, atomic writes, the builder
and the `kernelsuite shards` command."""

import os
import struct

import numpy as np
import pytest
import torch

from kernelsuite.cli import main
from kernelsuite.data import ShardError, open_shard, read_header, write_shard
from kernelsuite.data.build import ShardWriter, load_tokenizer, text_documents
from kernelsuite.data.shards import HEADER_BYTES


@pytest.mark.parametrize("dtype,high", [("uint16", 2**16), ("uint32", 2**32)])
def test_round_trip(tmp_path, dtype, high):
    tokens = np.random.default_rng(0).integers(0, high, 1001, dtype=np.int64)
    path = write_shard(tmp_path / "a.bin", tokens, dtype)
    got = open_shard(path)
    assert isinstance(got, np.memmap) and got.dtype == np.dtype(dtype)
    assert np.array_equal(got, tokens)
    assert os.path.getsize(path) == HEADER_BYTES + tokens.size * got.itemsize
    with pytest.raises(ValueError):  # read-only
        got[0] = 1


def test_dtype_is_chosen_and_inputs_accepted(tmp_path):
    assert read_header(write_shard(tmp_path / "a", [1, 2, 65535]))[0] == np.uint16
    assert read_header(write_shard(tmp_path / "b", torch.tensor([1, 65536])))[0] == np.uint32
    assert open_shard(write_shard(tmp_path / "c", np.array([7], np.uint8))).tolist() == [7]
    empty = open_shard(write_shard(tmp_path / "d", np.array([], np.int64)))
    assert empty.size == 0 and not empty.flags.writeable


@pytest.mark.parametrize("tokens,dtype,error,match", [
    (np.zeros((2, 2), np.int64), None, ValueError, "1-D"),
    (np.array([1.0, 2.0]), None, TypeError, "integer"),
    (np.array([True]), None, TypeError, "integer"),
    (np.array([-1, 2]), None, ValueError, "negative"),
    (np.array([70000]), "uint16", ValueError, "does not fit in uint16"),
    (np.array([2**32]), None, ValueError, "does not fit in uint32"),
    (np.array([1]), "int64", ValueError, "dtype must be uint16 or uint32"),
])
def test_write_rejects_bad_tokens(tmp_path, tokens, dtype, error, match):
    with pytest.raises(error, match=match):
        write_shard(tmp_path / "a.bin", tokens, dtype)
    assert os.listdir(tmp_path) == []


def _corrupt(path, head=None, extra=b"", cut=0):
    data = bytearray(path.read_bytes())
    if head:
        offset, fmt, value = head
        struct.pack_into(fmt, data, offset, value)
    data = bytes(data[:len(data) - cut]) + extra
    path.write_bytes(data)


@pytest.mark.parametrize("damage,match", [
    (dict(head=(0, "<8s", b"NOTSHARD")), "not a token shard"),
    (dict(head=(8, "<I", 2)), "unsupported format version 2"),
    (dict(head=(12, "<I", 8)), "unknown token dtype code 8"),
    (dict(head=(12, "<I", 4)), "truncated"),  # uint16 data read as uint32: too short
    (dict(cut=1), "truncated: 231 bytes"),
    (dict(extra=b"\0\0"), "oversized: 234 bytes"),
    (dict(cut=220), "shorter than the 32-byte header"),
])
def test_bad_files_are_rejected_naming_the_file(tmp_path, damage, match):
    path = write_shard(tmp_path / "s.bin", np.arange(100))
    _corrupt(path, **damage)
    with pytest.raises(ShardError, match=match) as err:
        open_shard(path)
    assert str(path) in str(err.value)


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = write_shard(tmp_path / "s.bin", np.arange(10))

    def fail(fd):
        raise OSError("disk full")
    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        write_shard(path, np.arange(1000))
    with pytest.raises(OSError, match="disk full"):
        write_shard(tmp_path / "new.bin", np.arange(1000))
    assert os.listdir(tmp_path) == ["s.bin"]  # no temporary left, no new.bin
    assert open_shard(path).tolist() == list(range(10))  # the old shard is intact


def test_shard_writer_cuts_the_stream(tmp_path):
    writer = ShardWriter(tmp_path, shard_tokens=4)
    for part in ([1, 2, 3], [4, 5, 6, 7, 8], [], [9]):
        writer.add(np.array(part, np.int64))
    paths = writer.close()
    assert [p.name for p in paths] == ["shard_000000.bin", "shard_000001.bin",
                                       "shard_000002.bin"]
    assert [open_shard(p).tolist() for p in paths] == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]
    with pytest.raises(FileExistsError, match="already holds shards"):
        ShardWriter(tmp_path)
    with pytest.raises(ValueError, match="shard_tokens"):
        ShardWriter(tmp_path / "x", shard_tokens=0)


def test_text_documents(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a b\nc\n\n\nd\n\ne f\n")
    assert list(text_documents(path)) == ["a b\nc", "d", "e f"]
    assert list(text_documents(path, per_line=True)) == ["a b", "c", "d", "e f"]


def test_tokenizer_specs():
    assert list(load_tokenizer("bytes")("hé")) == list("hé".encode())
    assert load_tokenizer("kernelsuite.data.build:load_tokenizer") is load_tokenizer
    with pytest.raises(ValueError, match="tokenizer must be"):
        load_tokenizer("nonsense")
    with pytest.raises(TypeError, match="not callable"):
        load_tokenizer("kernelsuite.data.shards:MAGIC")


def test_cli_builds_shards_from_text(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("hello\n\nworld!\n")
    assert main(["shards", str(tmp_path / "out"), "--text", str(text), "--eos-id", "0",
                 "--shard-tokens", "8"]) == 0
    paths = sorted((tmp_path / "out").glob("*.bin"))
    tokens = np.concatenate([open_shard(p) for p in paths]).tolist()
    assert tokens == list(b"hello") + [0] + list(b"world!") + [0]
    assert [len(open_shard(p)) for p in paths] == [8, 5]
    assert str(paths[0]) in capsys.readouterr().out


def test_cli_builds_shards_from_npy_and_reports_errors(tmp_path, capsys):
    ids = np.arange(70000)
    np.save(tmp_path / "ids.npy", ids)
    assert main(["shards", str(tmp_path / "a"), "--npy", str(tmp_path / "ids.npy"),
                 "--dtype", "uint32", "--shard-tokens", "50000"]) == 0
    paths = sorted((tmp_path / "a").glob("*.bin"))
    assert np.array_equal(np.concatenate([open_shard(p) for p in paths]), ids)
    # too large for uint16: a clear error naming the file, no shard written
    assert main(["shards", str(tmp_path / "b"), "--npy", str(tmp_path / "ids.npy")]) == 2
    err = capsys.readouterr().err
    assert "ids.npy" in err and "does not fit in uint16" in err
    assert list((tmp_path / "b").glob("*.bin")) == []
