"""Run every benchmark (each in a process of its own), then write RESULTS.md.

python -m benchmarks [--size smoke|full] [--only NAME ...] [--results DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import report
from benchmarks.common import HERE, RESULTS_DIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--size", choices=("smoke", "full"), default="full")
    parser.add_argument("--only", nargs="+", choices=report.ORDER, default=list(report.ORDER))
    parser.add_argument(
        "--results", type=Path, default=RESULTS_DIR, help="where each benchmark's JSON goes"
    )
    parser.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md and the plots go")
    args = parser.parse_args(argv)
    started = time.monotonic()
    for name in args.only:
        code = subprocess.call(
            [
                sys.executable,
                "-m",
                f"benchmarks.{name}",
                "--size",
                args.size,
                "--out",
                str(args.results),
            ],
            cwd=HERE.parent,
        )
        if code != 0:
            print(f"benchmark {name} failed (exit {code})", file=sys.stderr)
            return code
    report.write(args.results, args.out)
    print(
        f"all benchmarks in {(time.monotonic() - started) / 60:.1f} min; "
        f"wrote {args.out / 'RESULTS.md'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
