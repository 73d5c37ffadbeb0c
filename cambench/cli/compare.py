"""``python -m cambench.compare RUN_DIR RUN_DIR [RUN_DIR ...] [--out FILE.csv] [--resamples 1000] [--seed 0]``:
paired comparison of finished runs on the same images (:mod:`cambench.analysis.compare`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cambench.analysis.compare import compare, load_run
from cambench.cli.errors import guarded

DESCRIPTION = "Paired comparison of finished runs on the same images"


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cambench.compare", description=DESCRIPTION)
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders (two or more)")
    parser.add_argument("--out", type=Path, help="also write the table as CSV")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give two or more run folders")
    table = compare([load_run(folder) for folder in args.runs], args.resamples, args.seed)
    print(table.to_string(index=False, float_format="%.4g"))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
