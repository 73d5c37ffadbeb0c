"""Measure the run-to-run variation of the reference sweep's scores; write the tolerances of
``python -m cambench.regress``:

    python scripts/measure_tolerance.py [--reference results/reference] [--out outputs/tolerance]
                                        [--factor 10] [--floor 1e-5]

The sweep of the reference folder runs once per variant, in this process; each variant is a way in
which the same code legitimately gives slightly other numbers:

- ``base``: torch's default thread count (one per core);
- ``repeat``: ``base`` again (the scorer probes its chunk sizes by timing, so they can differ);
- ``threads1``: ``torch.set_num_threads(1)`` (other reduction orders);
- ``contiguous``: ``runner.channels_last=false`` (another CPU convolution kernel path; the stand-in
  for another CPU, as this machine has one CPU type);
- ``chunk16``: ``runner.score_batch_size=16`` (another batching of the perturbed forward passes).

A score's tolerance is its largest absolute difference from ``base`` over the cells and variants,
times ``factor``, at least ``floor``, rounded up to one significant digit; metrics that were not
measured get the largest tolerance. Writes ``variation.csv`` (cell, metric, variant, mean,
difference) and ``tolerance.yaml`` into the reference folder.
"""

from __future__ import annotations

import argparse
import math
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch
import yaml

from cambench.regress import REFERENCE_DIR, SWEEP, TOLERANCE, cpu_name, load_sweep, run_sweep

VARIANTS = {  # name: (torch threads or None for torch's default, extra overrides of every cell)
    "base": (None, []),
    "repeat": (None, []),
    "threads1": (1, []),
    "contiguous": (None, ["runner.channels_last=false"]),
    "chunk16": (None, ["runner.score_batch_size=16"]),
}
VARIATION = "variation.csv"


def round_up(value: float) -> float:
    """``value`` rounded up to one significant digit (3.2e-6 -> 4e-6)."""
    scale = 10 ** math.floor(math.log10(value))
    return float(f"{math.ceil(value / scale - 1e-9) * scale:.0e}")


def measure(reference: Path, out: Path) -> tuple[pd.DataFrame, dict[str, float]]:
    """Every variant of the sweep: the means (cell, metric, variant, mean, difference from base)
    and the wall time of each variant."""
    sweep = load_sweep(reference / SWEEP)
    default_threads = torch.get_num_threads()
    frames, seconds = [], {}
    for variant, (threads, overrides) in VARIANTS.items():
        torch.set_num_threads(threads or default_threads)
        print(f"variant {variant}: {torch.get_num_threads()} threads, overrides {overrides}", flush=True)
        start = time.perf_counter()
        frames.append(run_sweep(sweep, out / variant, overrides).assign(variant=variant))
        seconds[variant] = round(time.perf_counter() - start)
    torch.set_num_threads(default_threads)
    table = pd.concat(frames, ignore_index=True)
    base = table[table["variant"] == "base"].set_index(["cell", "metric"])["mean"]
    table["difference"] = table["mean"] - base.reindex(pd.MultiIndex.from_frame(table[["cell", "metric"]])).to_numpy()
    return table[["cell", "metric", "variant", "mean", "difference"]], seconds


def tolerances(variation: pd.DataFrame, factor: float, floor: float) -> dict[str, dict]:
    """Per metric: the largest absolute difference, where it was seen, and the tolerance."""
    moved = variation.assign(size=variation["difference"].abs().fillna(0.0))
    out = {}
    for metric, rows in moved.groupby("metric", sort=False):
        worst = rows.loc[rows["size"].idxmax()]
        largest = float(worst["size"])
        out[metric] = {
            "max_abs_difference": largest,
            "seen_in": f"{worst['cell']} / {worst['variant']}" if largest else "none",
            "tolerance": round_up(max(floor, factor * largest)),
        }
    return out


def header(factor: float, floor: float, seconds: dict[str, float]) -> str:
    threads = torch.get_num_threads()
    return f"""\
# Tolerances of python -m cambench.regress: the absolute difference allowed between a score's mean and the
# reference (results/reference/reference.csv). Written by scripts/measure_tolerance.py on {datetime.now():%Y-%m-%d}:
# the reference sweep ran once per variant (base: {threads} torch threads; repeat: the same again; threads1:
# torch.set_num_threads(1); contiguous: runner.channels_last=false; chunk16: runner.score_batch_size=16), and
# each metric's tolerance is {factor:g} x its largest absolute difference from base over all cells and variants,
# at least {floor:g}, rounded up to one significant digit (variation.csv has every difference).
# Wall time of each variant (s; on a machine shared with other jobs): {seconds}.
# Measured on one CPU type only: {cpu_name()}. The contiguous variant stands in for another CPU
# kernel path; another CPU family (AVX-512 vs AVX2, ARM) or another torch / oneDNN version can move the
# scores more: measure again there. default: the tolerance of metrics that were not measured (the largest).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, default=REFERENCE_DIR, help=f"reference folder ({REFERENCE_DIR})")
    parser.add_argument("--out", type=Path, default=Path("outputs/tolerance"), help="run folders of the variants")
    parser.add_argument("--factor", type=float, default=10.0, help="tolerance = factor x largest difference")
    parser.add_argument("--floor", type=float, default=1e-5, help="smallest tolerance")
    args = parser.parse_args()
    variation, seconds = measure(args.reference, args.out)
    variation.to_csv(args.reference / VARIATION, index=False)
    metrics = tolerances(variation, args.factor, args.floor)
    spec = {"default": max(m["tolerance"] for m in metrics.values()), "metrics": metrics}
    text = header(args.factor, args.floor, seconds) + yaml.safe_dump(spec, sort_keys=False)
    (args.reference / TOLERANCE).write_text(text)
    print(pd.DataFrame(metrics).T.to_string())
    print(f"written: {args.reference / TOLERANCE}, {args.reference / VARIATION}")


if __name__ == "__main__":
    main()
