"""Token shards: format round trip, clear errors for bad files, atomic writes, the builder
and the `kernelsuite shards` command."""

import contextlib
import os
import signal
import struct
import subprocess
import sys
import textwrap

import re

import numpy as np
import pytest
import torch

from kernelsuite.cli import main
from kernelsuite.data import ShardError, open_shard, read_header, write_shard
from kernelsuite.data.build import ShardWriter, build_shards, load_tokenizer, text_documents
from kernelsuite.data.shards import HEADER_BYTES, TEMP_PREFIX


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
    text = "\n a b\nc\n\n \nd\r\n\r\ne f\n\n"
    path.write_bytes(text.encode())
    assert list(text_documents(path)) == [" a b\nc", "d", "e f"]
    assert list(text_documents(path, "line")) == [" a b", "c", "d", "e f"]
    assert list(text_documents(path, "file")) == [text]
    # kept separators: blank lines and line ends stay with the document before them
    assert list(text_documents(path, keep_separators=True)) == [
        "\n a b\nc\n\n \n", "d\r\n\r\n", "e f\n\n"]
    for mode in ("paragraph", "line", "file"):
        assert "".join(text_documents(path, mode, keep_separators=True)) == text
    with pytest.raises(ValueError, match="mode must be one of"):
        list(text_documents(path, "lines"))


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


def _tokens(directory):
    paths = sorted(directory.glob("*.bin"))
    return np.concatenate([open_shard(p) for p in paths]).tolist() if paths else []


TEXT = "\n\nfirst line\nsecond  \n\n\n\npara two\r\n\r\n  \t\n héllo\n\nno newline at the end"


@pytest.mark.parametrize("mode", [[], ["--doc-per-line"], ["--doc-per-file"]])
def test_cli_text_without_eos_keeps_every_byte(tmp_path, mode):
    """Without --eos-id the bytes tokenizer gives the files' bytes exactly: blank lines,
    newlines, CRLF and whitespace are not dropped (they were: paragraphs glued)."""
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(TEXT.encode())
    b.write_bytes(b"\n\nsecond file\n")
    assert main(["shards", str(tmp_path / "out"), "--text", str(a), str(b),
                 "--shard-tokens", "7", *mode]) == 0
    assert bytes(_tokens(tmp_path / "out")) == a.read_bytes() + b.read_bytes()


def test_cli_text_with_eos(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_bytes(b"one\ntwo\n\n\nthree\n")
    b.write_bytes(b"four\n")
    eos = [300]

    def run(*mode):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        assert main(["shards", str(out), "--text", str(a), str(b), "--eos-id", "300",
                     *mode]) == 0
        return _tokens(out)
    assert run() == list(b"one\ntwo") + eos + list(b"three") + eos + list(b"four") + eos
    assert run("--doc-per-line") == (list(b"one") + eos + list(b"two") + eos + list(b"three")
                                     + eos + list(b"four") + eos)
    assert run("--doc-per-file") == list(a.read_bytes()) + eos + list(b.read_bytes()) + eos


def test_cli_text_options_are_checked(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("x\n")
    with pytest.raises(SystemExit) as exit_:  # argparse: the modes exclude each other
        main(["shards", str(tmp_path / "o"), "--text", str(text), "--doc-per-line",
              "--doc-per-file"])
    assert exit_.value.code == 2 and "not allowed with" in capsys.readouterr().err
    np.save(tmp_path / "ids.npy", np.arange(10))
    for argv, match in [
            (["--npy", str(tmp_path / "ids.npy"), "--eos-id", "0"], "are for --text"),
            (["--npy", str(tmp_path / "ids.npy"), "--doc-per-file"], "are for --text"),
            (["--text", str(text), "--eos-id", "65536"], r"--eos-id must be in \[0, 65535\]"),
            (["--text", str(text), "--eos-id", "-1"], "--eos-id must be in"),
            (["--text", str(text), "--prefix", "../up"], "prefix must be")]:
        assert main(["shards", str(tmp_path / "o"), *argv]) == 2
        assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_cli_non_utf8_text_is_an_error_naming_the_file(tmp_path, capsys):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("fine\n" * 1000)
    bad.write_bytes(b"ok\nab\xff\xfecd\n")
    out = tmp_path / "out"
    assert main(["shards", str(out), "--text", str(good), str(bad),
                 "--shard-tokens", "100"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"kernelsuite shards: error: {bad}: not UTF-8 text: line 2, "
                          "byte offset 5")
    assert not out.exists()  # the shards of good.txt were removed, and the new directory


def test_cli_failed_npy_leaves_no_new_files(tmp_path, capsys):
    """A bad input after good ones used to leave a partial shard set."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    np.save(tmp_path / "good.npy", np.arange(1000))
    np.save(tmp_path / "bad.npy", np.array([1.5, 2.5]))
    (tmp_path / "empty.npy").write_bytes(b"")
    for bad in ("bad.npy", "empty.npy"):
        assert main(["shards", str(out), "--npy", str(tmp_path / "good.npy"),
                     str(tmp_path / bad), "--shard-tokens", "100"]) == 2
        err = capsys.readouterr().err
        assert bad in err and err.count("\n") == 1
        assert os.listdir(out) == ["notes.txt"]  # what was there before stays


def test_shard_writer_abort(tmp_path):
    def arrays():
        yield np.arange(10)
        yield np.arange(10)
        raise RuntimeError("tokenizer failed")
    with pytest.raises(RuntimeError, match="tokenizer failed"):
        build_shards(arrays(), tmp_path / "new" / "deeper", shard_tokens=3)
    assert os.listdir(tmp_path) == []  # the shards and the directories it made are gone
    with ShardWriter(tmp_path / "ok", shard_tokens=3) as writer:
        writer.add(np.arange(7))
    assert [len(open_shard(p)) for p in writer.paths] == [3, 3, 1]
    for kwargs, match in [(dict(prefix="a/b"), "prefix"), (dict(prefix=".x"), "prefix"),
                          (dict(prefix="*"), "prefix"), (dict(dtype="int8"), "dtype"),
                          (dict(shard_tokens=True), "shard_tokens")]:
        with pytest.raises(ValueError, match=match):
            ShardWriter(tmp_path / "bad", **kwargs)


@contextlib.contextmanager
def _umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_shards_get_the_usual_file_mode(tmp_path):
    """Shards were written 0600 (mkstemp's mode); they get 0666 less the umask, as any file
    a program creates."""
    for mask in (0o022, 0o002, 0o077):
        with _umask(mask):
            path = write_shard(tmp_path / f"m{mask:o}.bin", np.arange(5))
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask


_KILLED_WRITER = textwrap.dedent("""
    import os, sys
    from kernelsuite.data.build import ShardWriter
    os.fsync = lambda fd: os._exit(9)  # the writer dies in the middle of its first shard
    ShardWriter(sys.argv[1], shard_tokens=4).add(list(range(4)))
""")


def test_temporary_files_of_killed_writers_are_removed(tmp_path, capsys):
    out = tmp_path / "out"
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(out)])
    assert writer.wait(timeout=120) == 9
    (stale,) = out.iterdir()  # its temporary file names it
    assert stale.name.startswith(f"{TEMP_PREFIX}{writer.pid}-")
    # a temporary file of a live writer (this process, the parent) is left alone
    live = out / f"{TEMP_PREFIX}{os.getppid()}-0123abcd-shard_000000.bin"
    live.write_bytes(b"")
    text = tmp_path / "t.txt"
    text.write_text("abc")
    assert main(["shards", str(out), "--text", str(text)]) == 0
    assert f"removed {stale}" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [live.name, "shard_000000.bin"]


@contextlib.contextmanager
def _deadline(seconds):
    """Raise TimeoutError in the test if it blocks (an open() waiting on a FIFO)."""
    def alarm(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_non_regular_files_are_refused(tmp_path):
    """open_shard on a FIFO hung waiting for a writer; it is refused at once."""
    fifo = tmp_path / "fifo.bin"
    os.mkfifo(fifo)
    with _deadline(10):
        for fn in (open_shard, read_header):
            with pytest.raises(ShardError, match=f"{fifo}: not a token shard: a FIFO"):
                fn(fifo)
        with pytest.raises(ShardError, match="a directory"):
            open_shard(tmp_path)


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
