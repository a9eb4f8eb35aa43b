"""`kernelsuite` command line: bench, report, compare, profile, roofline, hopper-static,
shards."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _bench(args) -> int:
    import contextlib
    import os

    import torch

    cuda = torch.cuda.is_available()
    if args.tiny and not cuda:  # the GPU cases' Triton kernels, run by the interpreter
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from .harness.cases import get_cases, get_notes
    from .harness.run import busy_core, format_table, run_cases

    if args.list:
        print(case_list(args.kernels, args.device, args.tiny, args.all))
        return 0
    device = args.device or ("cuda" if cuda else "cpu")
    if args.tiny:  # the GPU's cases (implementations, kernels) at toy shapes, on device
        cases = get_cases(args.kernels, "cuda", "tiny")
    else:
        cases = get_cases(args.kernels, device, "all" if args.all else "quick")
    if not cases:
        raise ValueError(f"no case of {args.kernels or 'any kernel'} runs on {device}"
                         + ("" if args.tiny else " (--tiny: the GPU cases as a dry run)"))
    for path in filter(None, (args.markdown, args.csv)):  # fail before the run, not after
        _check_writable(path)
    threads = torch.get_num_threads()
    try:
        if args.threads is not None:
            torch.set_num_threads(args.threads)  # numba's kernels take torch's count
        with busy_core() if args.busy_core else contextlib.nullcontext() as busy:
            df = run_cases(cases, device, impls=args.impl)
    finally:
        torch.set_num_threads(threads)
    notes = [] if args.tiny else get_notes(args.kernels, device)
    if args.busy_core:
        notes.insert(0, f"Measured beside a busy core: a process spinning on CPU {busy[0]} for "
                        "the whole run (--busy-core).")
    table = "\n\n".join([format_table(df)] + notes)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    if args.csv:
        df.to_csv(args.csv, index=False)
    return 0


def case_list(kernels, device=None, tiny=False, full=False) -> str:
    """`kernelsuite bench --list`: each area with what it measures, then every case and
    its implementations (with their roles) on each device type it runs on (or on
    `device`'s), at the size chosen; the ids that `profile` and `pytest -k` take."""
    from .harness.cases import areas, get_cases

    size = "tiny" if tiny else "all" if full else "quick"
    kinds = [device] if device else ["cpu", "cuda"]
    lines = []
    for name in kernels or list(areas()):
        area = areas().get(name)
        lines += [f"{name}: {area.summary}" if area else name]
        for kind in kinds:
            for case in get_cases([name], kind, size):
                impls = ", ".join(f"{i} ({case.role(i)})" for i in case.impls)
                lines.append(f"  {kind:4} {case.id}: {impls}")
    return "\n".join(lines)


def _roofline(args) -> int:
    from .harness.roofline import write

    print(write(args.gpu, args.out))
    return 0


def _hopper_static(args) -> int:
    from .harness import hopper

    return hopper.main(args.rest)


def _report(args) -> int:
    import pandas as pd

    from .harness.report import read_asv, read_pytest_benchmark, write_report

    asv = args.asv_results or "bench/asv_results"
    frames = [read_pytest_benchmark(args.pytest_json)]
    # the default folder may be absent (outside the repository) when JSON files are given
    if args.asv_results or not args.pytest_json or Path(asv).is_dir():
        frames.append(read_asv(asv))
    long = pd.concat(frames)
    if long.empty:
        raise ValueError(f"no results in {asv} or {args.pytest_json}")
    for path in write_report(long, args.out):
        print(path)
    return 0


def _compare(args) -> int:
    from .harness.devices import machine_name
    from .harness.report import read_asv, regressions

    machine = args.machine or machine_name("cuda" if _cuda() else "cpu")
    worse = regressions(read_asv(args.asv_results), machine, args.base, args.head,
                        args.factor)
    n = worse.attrs  # what was compared, and what had no counterpart (not compared)
    counts = f"factor {args.factor}; {n['compared']} results compared" + "".join(
        f", {n[side]} only in {side[:4]}" for side in ("base_only", "head_only") if n[side])
    if worse.empty:
        print(f"no significant regression on {machine} from {args.base} to {args.head} "
              f"({counts})")
        return 0
    print(f"{len(worse)} significant regression(s) on {machine} from {args.base} to "
          f"{args.head} ({counts}):\n")
    print(worse.to_markdown(index=False, floatfmt=".4g"))
    return 1


def _profile(args) -> int:
    if args.gpu_case and not _cuda():  # the GPU case's Triton code, interpreted
        import os

        os.environ.setdefault("TRITON_INTERPRET", "1")
    from .harness.profile import profile

    files = profile(args.case, args.impl, args.device, args.out, args.seconds, args.native,
                    tool=args.tool, listing="cuda" if args.gpu_case else None)
    for path in files:
        print(path)
    return 0


def _area_names() -> list[str]:
    from .harness.cases import area_names

    return area_names()


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _checked(module: str, check: str, convert=str):
    """An argparse type: convert the text, then the library's own check (module.check,
    which raises ValueError naming the rule), so that a bad value is a usage error (exit 2)
    and the rule is written once. The module is imported only when the option is given."""
    def parse(text):
        import importlib

        try:
            return getattr(importlib.import_module(module, __package__), check)(convert(text))
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _check_writable(path) -> None:
    """OSError naming path when a file cannot be written there (checked before a long
    run, so that its results are not lost at the end)."""
    import os

    folder = Path(path).absolute().parent
    why = ("a NUL character in the name" if "\0" in str(path) else
           "a directory" if Path(path).is_dir() or str(path).endswith(("/", os.sep)) else
           f"no directory {str(folder)!r}" if not folder.is_dir() else
           f"{str(folder)!r} is not writable" if not os.access(folder, os.W_OK) else None)
    if why:
        raise OSError(f"cannot write {str(path)!r}: {why}")


# what a command raises for bad input (values, files, a missing optional package); anything
# else is a bug and keeps its traceback
USAGE_ERRORS = (ValueError, OSError, ModuleNotFoundError)


def _shards(args) -> int:
    import numpy as np

    from .data.build import (ShardWriter, load_tokenizer, text_documents,
                             tokenize_documents)

    mode = "line" if args.doc_per_line else "file" if args.doc_per_file else "paragraph"
    try:
        if args.npy and (args.eos_id is not None or mode != "paragraph" or args.tokenizer):
            raise ValueError("--eos-id, --tokenizer, --doc-per-line and --doc-per-file are "
                             "for --text; --npy arrays are token ids already")
        top = 2**16 - 1 if args.dtype == "uint16" else 2**32 - 1
        if args.eos_id is not None and not 0 <= args.eos_id <= top:
            raise ValueError(f"--eos-id must be in [0, {top}] for {args.dtype} shards, got "
                             f"{args.eos_id}")
        tokenizer = load_tokenizer(args.tokenizer or "bytes") if args.text else None
        writer = ShardWriter(args.out, args.shard_tokens, args.dtype, args.prefix)
        for tmp in writer.removed:
            print(f"removed {tmp}: a temporary file left by a writer that was killed",
                  file=sys.stderr)
        with writer:  # on any error: no new shard remains
            for path in args.npy or []:
                try:
                    ids = np.load(path, mmap_mode="r")
                    for i in range(0, max(ids.size, 1), 1 << 24):  # bounded memory
                        writer.add(ids[i:i + (1 << 24)] if ids.ndim == 1 else ids)
                except (ValueError, TypeError, EOFError) as e:
                    raise ValueError(f"{path}: {e}") from None
            for path in args.text or []:
                # without EOS the blank lines and newlines stay: nothing of the file is lost
                docs = text_documents(path, mode, keep_separators=args.eos_id is None)
                try:
                    for ids in tokenize_documents(docs, tokenizer, args.eos_id):
                        writer.add(ids)
                except (ValueError, TypeError) as e:
                    raise ValueError(e if str(e).startswith(f"{path}: ") else
                                     f"{path}: {e}") from None
        paths = writer.paths
    except (ValueError, TypeError, OSError, ImportError, AttributeError) as e:
        print(f"kernelsuite shards: error: {e}", file=sys.stderr)
        return 2
    total = 0
    for path in paths:
        n = path.stat().st_size
        total += n
        print(path)
    print(f"{len(paths)} shards, {total / 2**20:.1f} MiB", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kernelsuite", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="time every implementation of the registered cases "
                                         "on this machine and print a table")
    bench.add_argument("kernels", nargs="*", help="kernel areas (default: all): "
                       + ", ".join(_area_names()))
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the quick subset (the default)")
    size.add_argument("--all", action="store_true", help="the full sweep")
    size.add_argument("--tiny", action="store_true",
                      help="a dry run: the GPU's cases and implementations at toy shapes, on "
                           "this machine (without CUDA: CPU tensors, Triton interpreted)")
    device = _checked(".harness.cases", "check_device")
    bench.add_argument("--device", type=device,
                       help="cuda, cuda:N or cpu (default: cuda when available)")
    bench.add_argument("--impl", action="append", help="only this implementation (repeatable)")
    bench.add_argument("--markdown", help="also write the table to this file")
    bench.add_argument("--csv", help="also write every measured row to this CSV file")
    bench.add_argument("--list", action="store_true",
                       help="list the areas, cases and implementations (with --all/--tiny "
                            "and --device: that selection) instead of running them")
    bench.add_argument("--threads", type=_checked(".harness.run", "check_threads"),
                       help="CPU threads for torch and the Numba kernels (default: torch's, "
                            "one per core)")
    bench.add_argument("--busy-core", action="store_true",
                       help="run beside a process that keeps one CPU busy (another job, a "
                            "data loader): how each implementation copes with a slow thread")
    bench.set_defaults(func=_bench)
    report = sub.add_parser("report", help="tables (Markdown, CSV) and plots per kernel from "
                                           "the asv results of every machine and "
                                           "pytest-benchmark JSON")
    report.add_argument("--asv-results",
                        help="asv results directory (default: bench/asv_results, when it "
                             "exists or no --pytest-json is given)")
    report.add_argument("--pytest-json", nargs="*", default=[], metavar="FILE",
                        help="pytest-benchmark JSON files (--benchmark-json/--benchmark-save)")
    report.add_argument("--out", default="bench/report", help="output folder "
                                                              "(default: bench/report)")
    report.set_defaults(func=_report)
    compare = sub.add_parser("compare", help="exit 1 when asv results of HEAD are "
                                             "significantly worse than BASE's")
    compare.add_argument("base", help="base commit (hash, may be abbreviated)")
    compare.add_argument("head", help="new commit")
    compare.add_argument("--machine", help="asv machine (default: this machine's name)")
    compare.add_argument("--factor", type=_checked(".harness.report", "check_factor", float),
                         default=1.2, help="how much worse counts: a finite number > 1 "
                                           "(default 1.2: 20%%)")
    compare.add_argument("--asv-results", default="bench/asv_results")
    compare.set_defaults(func=_compare)
    prof = sub.add_parser("profile", help="profile one case: py-spy on CPU, torch.profiler "
                                          "on CUDA, into OUT/<kernel>/<case>/")
    prof.add_argument("case", help="case id, kernel/name (e.g. packing/ffd-mixed-c2048)")
    prof.add_argument("--impl", help="implementation (default: the project's own)")
    prof.add_argument("--device", type=device,
                      help="cuda, cuda:N or cpu (default: cuda when available)")
    prof.add_argument("--out", default="profiles", help="output root (default: profiles)")
    prof.add_argument("--seconds", type=_checked(".harness.profile", "check_seconds", float),
                      default=5.0, help="CPU: seconds of calls to sample, > 0 (default 5)")
    prof.add_argument("--native", action="store_true",
                      help="CPU: include native (C/C++) frames in py-spy's samples")
    prof.add_argument("--tool", choices=["auto", "py-spy", "torch"], default="auto",
                      help="auto (default): torch.profiler on CUDA, py-spy on CPU")
    prof.add_argument("--gpu-case", action="store_true",
                      help="CASE is one of the GPU's cases, run on --device (a dry run on "
                           "CPU: Triton under the interpreter)")
    prof.set_defaults(func=_profile)
    roof = sub.add_parser("roofline", help="FLOPs, bytes and the roofline floor of every GPU "
                                           "benchmark case, as a Markdown table")
    roof.add_argument("--gpu", default="H200", help="H100 or H200 (default H200)")
    roof.add_argument("--out", help="default: bench/report/roofline-GPU.md")
    roof.set_defaults(func=_roofline)
    static = sub.add_parser("hopper-static", add_help=False,
                            help="registers, spills, shared memory, wgmma/TMA and occupancy of "
                                 "every Triton kernel config on sm_90, compiled without a GPU "
                                 "(bench/report/hopper-static.md; --help for options)")
    static.add_argument("rest", nargs=argparse.REMAINDER)
    static.set_defaults(func=_hopper_static)
    shards = sub.add_parser(
        "shards", help="build token shards from text and a tokenizer, or from .npy arrays",
        description="Write token shards (see kernelsuite.data.shards) into OUT: from UTF-8 "
                    "text files cut into documents and tokenized, or from 1-D .npy arrays of "
                    "token ids, concatenated in order. Without --eos-id nothing of the text "
                    "is dropped: blank lines and newlines stay in the token stream (with "
                    "--tokenizer bytes the tokens are the files' bytes exactly). With "
                    "--eos-id each document is followed by EOS, and the blank lines and "
                    "line ends between documents are dropped. On any error no new file "
                    "remains in OUT.")
    shards.add_argument("out", help="output directory (created if needed)")
    source = shards.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", nargs="+", metavar="FILE", help="UTF-8 text files")
    source.add_argument("--npy", nargs="+", metavar="FILE", help=".npy arrays of token ids")
    shards.add_argument("--tokenizer",
                        help="for --text: 'bytes' (UTF-8 bytes, the default), "
                             "'tiktoken:ENCODING' or 'module:function'")
    shards.add_argument("--eos-id", type=int, help="for --text: append this id after every "
                                                    "document")
    split = shards.add_mutually_exclusive_group()
    split.add_argument("--doc-per-line", action="store_true",
                       help="for --text: one document per line (default: documents are "
                            "separated by blank lines)")
    split.add_argument("--doc-per-file", action="store_true",
                       help="for --text: one document per file, its text as it is")
    shards.add_argument("--shard-tokens", type=int, default=2**27,
                        help="tokens per shard (default 2^27: 256 MiB of uint16)")
    shards.add_argument("--dtype", choices=["uint16", "uint32"], default="uint16")
    shards.add_argument("--prefix", default="shard", help="file names PREFIX_000000.bin, ...")
    shards.set_defaults(func=_shards)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["hopper-static"]:  # its own parser reads every option (a REMAINDER
        # positional would not take options that come first)
        args = argparse.Namespace(command=argv[0], func=_hopper_static, rest=argv[1:])
    else:
        args = parser.parse_args(argv)
    try:
        return args.func(args)
    except USAGE_ERRORS as e:
        print(f"kernelsuite {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
