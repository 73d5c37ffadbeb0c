"""``python -m cambench.aggregate SWEEP_DIR [--out DIR] [--by KEY] [--metrics NAME ...] [--resamples 1000]
[--seed 0]``: the leaderboard of a sweep, its ranking reliability and pictures (:mod:`cambench.analysis.aggregate`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cambench.analysis import leaderboard, ranking
from cambench.analysis.aggregate import aggregate
from cambench.cli.errors import guarded

DESCRIPTION = "The leaderboard of a sweep, with its ranking reliability and pictures"


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cambench.aggregate",
        description=DESCRIPTION,
    )
    parser.add_argument("folder", type=Path, help="a sweep's folder, an outputs/ tree, or any folder of finished runs")
    parser.add_argument("--out", type=Path, help="output folder (default: results/leaderboards/<folder name>/)")
    parser.add_argument(
        "--by", choices=leaderboard.BY_KEYS, help="also write one table per metric with a column per value of KEY"
    )
    parser.add_argument("--metrics", nargs="+", help="only these metric columns, or metrics (all their columns)")
    parser.add_argument("--resamples", type=int, default=ranking.RESAMPLES, help="bootstrap resamples of the ranking")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    args = parser.parse_args(argv)
    if args.resamples < 1:
        parser.error("--resamples must be >= 1")
    written, notes = aggregate(args.folder, args.out, args.by, args.metrics, args.resamples, args.seed)
    for note in notes:
        print(f"note: {note}")
    print("written:\n" + "\n".join(f"  {path}" for path in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
