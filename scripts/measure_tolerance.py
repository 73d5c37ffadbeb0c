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
- ``chunk16``: ``runner.score_batch_size=16`` (another batching of the perturbed forward passes);
- ``avx2``: ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN's AVX2 kernels instead of AVX-512 ones: the kernels of
  another CPU generation);
- ``avx2_threads1``: both at once.

Every variant runs in a process of its own (oneDNN reads ``ONEDNN_MAX_CPU_ISA`` once, when it loads).

A score's tolerance is its largest absolute difference from ``base`` over the cells and variants,
times ``factor``, at least ``floor``, rounded up to one significant digit; metrics that were not
measured get the largest tolerance. Writes ``variation.csv`` (cell, metric, variant, mean,
difference) and ``tolerance.yaml`` into the reference folder.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch
import yaml

from cambench.app.regress import REFERENCE_DIR, SWEEP, TOLERANCE, cpu_name, load_sweep, run_sweep


@dataclass(frozen=True)
class Variant:
    threads: int | None = None  # torch threads; None: torch's default (one per core)
    overrides: tuple[str, ...] = ()  # extra overrides of every cell
    environment: tuple[tuple[str, str], ...] = ()  # set before torch loads


AVX2 = (("ONEDNN_MAX_CPU_ISA", "AVX2"),)
VARIANTS = {
    "base": Variant(),
    "repeat": Variant(),
    "threads1": Variant(threads=1),
    "contiguous": Variant(overrides=("runner.channels_last=false",)),
    "chunk16": Variant(overrides=("runner.score_batch_size=16",)),
    "avx2": Variant(environment=AVX2),
    "avx2_threads1": Variant(threads=1, environment=AVX2),
}
VARIATION = "variation.csv"
MEANS = "means.csv"


def round_up(value: float) -> float:
    """``value`` rounded up to one significant digit (3.2e-6 -> 4e-6)."""
    scale = 10 ** math.floor(math.log10(value))
    return float(f"{math.ceil(value / scale - 1e-9) * scale:.0e}")


def run_variant(reference: Path, out: Path, name: str) -> None:
    """One variant's sweep, in this process (started by :func:`measure` with the variant's environment):
    its means in ``out/<name>/means.csv``."""
    variant = VARIANTS[name]
    if variant.threads:
        torch.set_num_threads(variant.threads)
    print(f"variant {name}: {torch.get_num_threads()} threads, {variant}", flush=True)
    means = run_sweep(load_sweep(reference / SWEEP), out / name, variant.overrides)
    means.to_csv(out / name / MEANS, index=False)


def measure(reference: Path, out: Path) -> tuple[pd.DataFrame, dict[str, float]]:
    """Every variant of the sweep, each in a process of its own: the means (cell, metric, variant, mean,
    difference from base) and the wall time of each variant."""
    frames, seconds = [], {}
    for name, variant in VARIANTS.items():
        start = time.perf_counter()
        command = [sys.executable, __file__, "--reference", str(reference), "--out", str(out), "--variant", name]
        subprocess.run(command, env=os.environ | dict(variant.environment), check=True)
        frames.append(pd.read_csv(out / name / MEANS).assign(variant=name))
        seconds[name] = round(time.perf_counter() - start)
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
    cpuinfo = Path("/proc/cpuinfo")
    isa = "AVX-512" if cpuinfo.exists() and "avx512f" in cpuinfo.read_text(errors="ignore") else "no AVX-512 seen"
    return f"""\
# Tolerances of python -m cambench.regress: the absolute difference allowed between a score's mean and the
# reference (results/reference/reference.csv). Written by scripts/measure_tolerance.py on {datetime.now():%Y-%m-%d}:
# the reference sweep ran once per variant (base: {threads} torch threads; repeat: the same again; threads1:
# torch.set_num_threads(1); contiguous: runner.channels_last=false; chunk16: runner.score_batch_size=16;
# avx2: ONEDNN_MAX_CPU_ISA=AVX2, oneDNN's kernels of another CPU generation; avx2_threads1: both), and
# each metric's tolerance is {factor:g} x its largest absolute difference from base over all cells and variants,
# at least {floor:g}, rounded up to one significant digit (variation.csv has every difference).
# Wall time of each variant (s; on a machine shared with other jobs): {seconds}.
# Measured on {cpu_name()} ({isa}); the avx2 variants stand in for an older CPU, the contiguous one for
# another convolution path. An ARM CPU or another torch / oneDNN version can move the scores more: measure
# again there. default: the tolerance of metrics that were not measured (the largest).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, default=REFERENCE_DIR, help=f"reference folder ({REFERENCE_DIR})")
    parser.add_argument("--out", type=Path, default=Path("outputs/tolerance"), help="run folders of the variants")
    parser.add_argument("--factor", type=float, default=10.0, help="tolerance = factor x largest difference")
    parser.add_argument("--floor", type=float, default=1e-5, help="smallest tolerance")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # a child process: one variant
    args = parser.parse_args()
    if args.variant:
        run_variant(args.reference, args.out, args.variant)
        return
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
