"""Paired comparison of finished runs on the same images (``python -m cambench.compare``).

Every pair of runs (a, b) is matched by image id; per score column both runs have, the table gives
both means, the mean paired difference b - a with a seeded 95% percentile-bootstrap interval
(images resampled), the two-sided Wilcoxon signed-rank p-value (scipy, zero differences dropped as
in its default ``zero_method="wilcox"``), the p-value after Holm's correction over the pairs
compared on that metric, and which run is better at the 5% level (by the metric's direction), so a
table can say which method is significantly better. Runs on different images are refused: pairing
needs the same ids (the same dataset, ``runner.num_images`` and ``runner.seed``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from scipy.stats import wilcoxon

from cambench.analysis.runs import RunsError, load_finished
from cambench.analysis.statistics import bootstrap_ci
from cambench.errors import CambenchError

LEVEL = 0.05


class CompareError(CambenchError):
    """Runs that cannot be compared (missing files, different images)."""


@dataclass
class Run:
    label: str
    rows: pd.DataFrame  # indexed by image id
    scores: list[str]  # score columns, in the run's metric order
    lower: set[str]  # the scores where lower is better


def load_run(folder: Path) -> Run:
    """A finished run: its per-image rows and the score columns of its metrics (from ``run.json``)."""
    try:
        run = load_finished(folder)
    except RunsError as err:
        raise CompareError(str(err)) from None
    return Run(f"{run.method}/{run.model}", run.rows(), run.scores, run.lower_is_better)


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted)."""
    order = sorted((v, i) for i, v in enumerate(p) if v == v)
    adjusted = [float("nan")] * len(p)
    running = 0.0
    for rank, (value, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * value))
        adjusted[i] = running
    return adjusted


def compare(runs: list[Run], resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (metric, pair of runs); see the module docstring."""
    ids = set(runs[0].rows.index)
    for run in runs[1:]:
        if set(run.rows.index) != ids:
            common = len(ids & set(run.rows.index))
            raise CompareError(
                f"{runs[0].label} and {run.label} scored different images ({len(ids)} and {len(run.rows)}, "
                f"{common} in common): rerun with the same dataset, runner.num_images and runner.seed"
            )
    labels = [run.label for run in runs]
    if len(set(labels)) < len(labels):  # the same method and model twice: number them
        labels = [f"{i}:{label}" for i, label in enumerate(labels)]
    order = sorted(ids)
    out = []
    for metric in [m for m in runs[0].scores if all(m in run.scores for run in runs)]:
        rows = []
        for (i, a), (j, b) in itertools.combinations(enumerate(runs), 2):
            x = torch.tensor(a.rows.loc[order, metric].to_numpy(dtype=float))
            y = torch.tensor(b.rows.loc[order, metric].to_numpy(dtype=float))
            paired = ~(x.isnan() | y.isnan())
            diff = (y - x)[paired]
            lo, hi = bootstrap_ci(diff, resamples, seed=seed)
            nonzero = diff[diff != 0]
            p = float(wilcoxon(nonzero.numpy()).pvalue) if len(nonzero) else 1.0
            rows.append(
                {
                    "metric": metric,
                    "a": labels[i],
                    "b": labels[j],
                    "n": int(paired.sum()),
                    "mean_a": x[paired].mean().item(),
                    "mean_b": y[paired].mean().item(),
                    "diff_b_minus_a": diff.mean().item(),
                    "ci95_low": lo,
                    "ci95_high": hi,
                    "p_wilcoxon": p,
                }
            )
        for row, adjusted in zip(rows, holm([r["p_wilcoxon"] for r in rows]), strict=True):
            row["p_holm"] = adjusted
            lower = metric in runs[0].lower
            b_better = (row["diff_b_minus_a"] < 0) if lower else (row["diff_b_minus_a"] > 0)
            row["better"] = (row["b"] if b_better else row["a"]) if adjusted < LEVEL else "no significant difference"
        out += rows
    return pd.DataFrame(out)
