"""``python -m cambench.report EXPERIMENT SWEEP_DIR [--out DIR]``: an experiment's finished runs beside the
papers' published values (:mod:`cambench.analysis.report`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cambench.analysis.report import experiments, report
from cambench.cli.errors import guarded

DESCRIPTION = "An experiment's finished runs beside the papers' published values"


@guarded
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cambench.report",
        description=DESCRIPTION,
    )
    parser.add_argument("experiment", help=f"the experiment ({', '.join(experiments())})")
    parser.add_argument("sweep_dir", type=Path, help="the sweep's folder (or any folder holding finished runs)")
    parser.add_argument("--out", type=Path, help="output folder (default results/reports/EXPERIMENT)")
    args = parser.parse_args(argv)
    out = args.out or Path("results") / "reports" / args.experiment
    report(args.experiment, args.sweep_dir, out)
    print((out / "report.md").read_text())
    print(f"written to {out / 'report.md'} and {out / 'report.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
