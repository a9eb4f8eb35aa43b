"""Every misuse of the command line is a one-line error naming the bad value, exit 2: never a
traceback, never exit 0. Nothing here runs a benchmark or a profile."""

import pytest
import torch

from kernelsuite import cli
from kernelsuite.harness import hopper, profile, run


def usage_error(argv, capsys) -> str:
    """The error line of an argparse usage error (SystemExit 2)."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


def error(argv, capsys) -> str:
    """The one line a command prints for bad input it finds at run time (exit 2)."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


@pytest.fixture
def no_runs(monkeypatch):
    """Fail the test if a benchmark or profile would start."""
    def refuse(*args, **kwargs):
        raise AssertionError("a benchmark or profile started")

    monkeypatch.setattr(run, "measure", refuse)
    monkeypatch.setattr(profile, "_py_spy", refuse)
    monkeypatch.setattr(profile, "_torch_profile", refuse)
    monkeypatch.setattr(hopper, "sweep", refuse)


@pytest.mark.parametrize("cmd", [["bench", "attention"], ["profile", "packing/x"]])
def test_device_must_be_one_this_machine_has(cmd, capsys, no_runs):
    assert usage_error(cmd + ["--device", "tpu"], capsys) == (
        f"kernelsuite {cmd[0]}: error: argument --device: device must be cpu, cuda or cuda:N, "
        "got 'tpu'")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    line = usage_error(cmd + ["--device", f"cuda:{gpus}"], capsys)
    assert f"device 'cuda:{gpus}': this machine has {gpus} CUDA device(s)" in line


def test_bench_names_unknown_implementations_and_empty_selections(capsys, no_runs,
                                                                  tmp_path):
    line = error(["bench", "attention", "--device", "cpu", "--impl", "nosuch"], capsys)
    assert line.startswith("kernelsuite bench: error: unknown implementation(s) ['nosuch'] for "
                           "these cases on cpu; known: [") and "'torch'" in line
    # a kernel with no case on the device measured nothing and exited 0
    assert error(["bench", "padding", "--device", "cpu"], capsys) == (
        "kernelsuite bench: error: no case of ['padding'] runs on cpu (--tiny: the GPU cases "
        "as a dry run)")
    # an output file that cannot be written is found before the run, not after it
    csv = tmp_path / "no-such-dir" / "rows.csv"
    assert error(["bench", "packing", "--device", "cpu", "--csv", str(csv)], capsys) == (
        f"kernelsuite bench: error: cannot write {str(csv)!r}: no directory "
        f"{str(csv.parent)!r}")
    # "new/" is a directory's name even before it exists (pandas failed writing it after
    # the whole run, found by test_fuzz_cli)
    for path, why in [(tmp_path, "a directory"), ("nul\0.md", "a NUL character in the name"),
                      (f"{tmp_path}/new/", "a directory")]:
        assert error(["bench", "packing", "--device", "cpu", "--markdown", str(path)],
                     capsys) == f"kernelsuite bench: error: cannot write {str(path)!r}: {why}"


@pytest.mark.parametrize("threads", ["0", "-2", "1.5", "two"])
def test_bench_threads_must_be_a_positive_int(threads, capsys, no_runs):
    assert usage_error(["bench", "attention", "--threads", threads], capsys) == (
        "kernelsuite bench: error: argument --threads: --threads must be a positive int, "
        f"got {int(threads) if threads.lstrip('-').isdigit() else threads!r}")


@pytest.mark.parametrize("seconds", ["-1", "0", "nan", "inf", "1e9"])
def test_profile_seconds_must_be_positive_and_finite(seconds, capsys, no_runs):
    line = usage_error(["profile", "packing/ffd-gamma-c2048", f"--seconds={seconds}"], capsys)
    assert line.startswith("kernelsuite profile: error: argument --seconds: seconds must be a "
                           "number in (0, 86400], got ")
    with pytest.raises(ValueError, match="seconds must be"):
        profile.profile("packing/ffd-gamma-c2048", seconds=float(seconds))


def test_profile_of_a_gpu_case_on_the_cpu_says_why(capsys, no_runs):
    line = error(["profile", "padding/pad-p50-4x64x64", "--device", "cpu"], capsys)
    assert line == ("kernelsuite profile: error: case 'padding/pad-p50-4x64x64' is a cuda case, "
                    "not one of the cpu cases (its code runs on the CPU as a dry run with "
                    "--gpu-case, listing='cuda')")
    line = error(["profile", "packing/ffd-gamma-c2048", "--impl", "nosuch"], capsys)
    assert "impl 'nosuch' does not run packing/ffd-gamma-c2048 on " in line


def test_roofline_names_the_known_gpus(capsys, tmp_path):
    assert error(["roofline", "--gpu", "nosuch", "--out", str(tmp_path / "r.md")], capsys) == (
        "kernelsuite roofline: error: gpu must be one of ['H100', 'H200'], got 'nosuch'")


@pytest.mark.parametrize("args,message", [
    (["--jobs", "0"], "argument --jobs: must be at least 1, got '0'"),
    (["--head-dim", "7"], "argument --head-dim: must be a multiple of 8 in [16, 256], got '7'"),
    (["--head-dim", "-64"], "argument --head-dim: must be a multiple of 8 in [16, 256], got "
                            "'-64'"),
    # an empty --from-json list compiled everything (12 minutes) instead
    (["--from-json"], "argument --from-json: expected at least one argument"),
    (["--no-attention", "--no-padding"], "nothing to compile: every kind is excluded "
                                         "(--no-attention, --no-padding, and no --candidates "
                                         "of a bf16 or fp32 --dtype)"),
    (["--no-attention", "--no-padding", "--candidates", "--dtype", "fp16"],
     "nothing to compile: every kind is excluded (--no-attention, --no-padding, and no "
     "--candidates of a bf16 or fp32 --dtype)"),
    # an empty list compiled no attention kernel, silently
    (["--head-dim"], "argument --head-dim: expected at least one argument"),
    (["--dtype"], "argument --dtype: expected at least one argument"),
    (["--bogus"], "unrecognized arguments: --bogus")])
def test_hopper_static_options_are_checked(args, message, capsys, no_runs):
    # options first: the REMAINDER positional used to reject every one of them
    assert usage_error(["hopper-static", *args], capsys) == (
        f"kernelsuite hopper-static: error: {message}")


def test_hopper_static_names_a_bad_rows_file(tmp_path, capsys, no_runs):
    rows = tmp_path / "rows.json"
    rows.write_text('{"kernel": "fwd"}\n{bad\n')
    out = str(tmp_path / "r.md")
    assert error(["hopper-static", "--from-json", str(rows), "--out", out], capsys).startswith(
        f"kernelsuite hopper-static: error: {rows}, line 2: not JSON rows (")
    rows.write_text('{"kernel": "fwd"}\n')
    assert error(["hopper-static", "--from-json", str(rows), "--out", out], capsys).startswith(
        f"kernelsuite hopper-static: error: ['{rows}']: not rows written by --json (")
    assert error(["hopper-static", "--from-json", str(tmp_path / "none")], capsys) == (
        f"kernelsuite hopper-static: error: [Errno 2] No such file or directory: "
        f"'{tmp_path / 'none'}'")
