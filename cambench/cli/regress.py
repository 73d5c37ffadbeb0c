"""``python -m cambench.regress [--update] [--reference DIR] [--sweep FILE] [--out DIR] [--threads N]``: rerun
the reference sweep and compare every score with the committed reference (:mod:`cambench.app.regress`).

Exit status 0: every score within its tolerance; 1: a score drifted, or a cell or score appeared or
disappeared; 2: no usable reference or sweep (or another user error). ``--update`` rewrites the
reference from the rerun (after showing what it changes): for a deliberate change of a method, metric
or default only.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

from cambench.app.regress import (
    REFERENCE,
    REFERENCE_DIR,
    REPORT,
    SWEEP,
    TOLERANCE,
    compare,
    load_reference,
    load_sweep,
    load_tolerances,
    report,
    run_sweep,
    write_reference,
)
from cambench.cli.errors import guarded


@guarded
def main(argv: list[str] | None = None) -> int:
    description = "Rerun the reference sweep and compare every score with the committed reference"
    parser = argparse.ArgumentParser(prog="python -m cambench.regress", description=description)
    parser.add_argument("--reference", type=Path, default=REFERENCE_DIR, help=f"reference folder ({REFERENCE_DIR})")
    parser.add_argument("--sweep", type=Path, help=f"sweep definition (default: the reference's {SWEEP})")
    parser.add_argument("--out", type=Path, help="run folders and regress.csv (default: outputs/regress/<time>)")
    parser.add_argument("--update", action="store_true", help="rewrite the reference from this run (deliberately)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own, one per core)")
    args = parser.parse_args(argv)
    out = args.out or Path("outputs/regress") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    sweep_file = args.sweep or args.reference / SWEEP
    if args.threads:
        torch.set_num_threads(args.threads)
    # the reference to compare with, read before the sweep runs (--update: the old one, where there is one)
    old = all((args.reference / name).exists() for name in (REFERENCE, TOLERANCE))
    baseline = None
    sweep = load_sweep(sweep_file)
    if old or not args.update:
        baseline = load_reference(args.reference), load_tolerances(args.reference / TOLERANCE)
    start = time.perf_counter()
    now = run_sweep(sweep, out)
    seconds = time.perf_counter() - start
    moved = False
    if baseline:
        reference, tolerances = baseline
        table = compare(reference, now, tolerances)
        table.to_csv(out / REPORT, index=False)
        if args.update:
            print("changes against the old reference:")
        print(f"{report(table)}\ntable: {out / REPORT}")
        moved = (table["status"] != "ok").any()
    print(f"sweep: {len(sweep.cells)} cells in {seconds:.0f} s")
    if args.update:
        write_reference(args.reference, now, sweep_file, seconds)
        print(f"reference rewritten: {args.reference / REFERENCE} ({len(now)} scores)")
    elif moved:
        print(
            "regress: scores moved. A deliberate change of a method, metric or default: rerun with --update "
            "and commit the new reference; otherwise find the cause.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
