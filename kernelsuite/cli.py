"""`kernelsuite` command line: `kernelsuite bench [--all] [KERNEL ...]`."""

from __future__ import annotations

import argparse
import sys


def _bench(args) -> int:
    import torch

    from .harness.cases import get_cases, get_notes
    from .harness.run import format_table, run_cases

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cases = get_cases(args.kernels, device, quick=not args.all)
    df = run_cases(cases, device, impls=args.impl)
    table = "\n\n".join([format_table(df)] + get_notes(args.kernels, device))
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    if args.csv:
        df.to_csv(args.csv, index=False)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="kernelsuite", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="time every implementation of the registered cases "
                                         "on this machine and print a table")
    bench.add_argument("kernels", nargs="*", help="kernel areas (default: all), e.g. attention")
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the quick subset (the default)")
    size.add_argument("--all", action="store_true", help="the full sweep")
    bench.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    bench.add_argument("--impl", action="append", help="only this implementation (repeatable)")
    bench.add_argument("--markdown", help="also write the table to this file")
    bench.add_argument("--csv", help="also write every measured row to this CSV file")
    bench.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
