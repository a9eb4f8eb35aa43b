"""List the asv benchmarks a `--bench` regex selects, named as asv matches them:
`suites.Class.method('case', 'impl')`. Exits 1 when it selects none, so that a GPU run
never spends its minutes on an asv call that measures nothing (ci/gpu.sh).

    python ci/asv_select.py REGEX [--out FILE]
"""

import argparse
import itertools
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def benchmark_names():
    from asv_bench import suites

    for cls_name in sorted(dir(suites)):
        cls = getattr(suites, cls_name)
        if not isinstance(cls, type) or not hasattr(cls, "params"):
            continue
        for method in sorted(dir(cls)):
            if method.startswith(("time_", "track_")):
                for combo in itertools.product(*cls.params):
                    yield f"suites.{cls_name}.{method}({', '.join(map(repr, combo))})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("regex")
    parser.add_argument("--out", help="also write the names to this file")
    args = parser.parse_args(argv)
    chosen = [name for name in benchmark_names() if re.search(args.regex, name)]
    text = "\n".join(chosen)
    print(text or f"no asv benchmark matches {args.regex!r}")
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if chosen else 1


if __name__ == "__main__":
    sys.exit(main())
