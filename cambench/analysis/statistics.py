"""Summary statistics of per-image scores: n, mean, standard deviation and a percentile bootstrap
interval of the mean; derived values (functions of several columns' means) from joint resamples."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import torch
from torch import Tensor

Derived = Callable[[dict[str, Tensor]], Tensor]


def resample_rows(n: int, resamples: int, seed: int) -> Tensor:
    """(resamples, n) row indices drawn with replacement, seeded."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randint(n, (resamples, n), generator=generator)


def _interval(means: Tensor, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2
    # a resample can leave a column with no value (its derived value is NaN): it is skipped
    lo, hi = torch.nanquantile(means, torch.tensor([tail, 1 - tail], dtype=means.dtype))
    return lo.item(), hi.item()


def bootstrap_ci(values: Tensor, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (N,), NaNs dropped."""
    values = values[~values.isnan()].double()
    if values.numel() == 0:
        return float("nan"), float("nan")
    return _interval(values[resample_rows(values.numel(), resamples, seed)].mean(1), level)


def derived_ci(
    columns: dict[str, Tensor], fn: Derived, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``fn`` of the columns' means (NaNs skipped per column),
    the rows resampled jointly so that every column sees the same images."""
    n = len(next(iter(columns.values())))
    idx = resample_rows(n, resamples, seed)
    means = {name: values.double()[idx].nanmean(1) for name, values in columns.items()}
    return _interval(fn(means).double(), level)


def summarise(
    rows: pd.DataFrame,
    metrics: list[str],
    resamples: int = 1000,
    seed: int = 0,
    derived: dict[str, Derived] | None = None,
) -> pd.DataFrame:
    """One row per metric: n, mean, standard deviation (n - 1) and the 95% bootstrap interval of the
    mean; then one row per derived value (``fn`` of the metrics' means; its n is the image count and
    it has no standard deviation)."""
    columns = {name: torch.tensor(rows[name].to_numpy(dtype=float)) for name in metrics}
    out = []
    for name, values in columns.items():
        lo, hi = bootstrap_ci(values, resamples, seed=seed)
        present = values[~values.isnan()]
        out.append(
            {
                "metric": name,
                "n": present.numel(),
                "mean": present.mean().item() if present.numel() else float("nan"),
                "sd": present.std().item() if present.numel() > 1 else float("nan"),
                "ci95_low": lo,
                "ci95_high": hi,
            }
        )
    for name, fn in (derived or {}).items():
        lo, hi = derived_ci(columns, fn, resamples, seed=seed)
        means = {column: values.nanmean() for column, values in columns.items()}
        mean = fn(means).item()
        out.append({"metric": name, "n": len(rows), "mean": mean, "sd": float("nan"), "ci95_low": lo, "ci95_high": hi})
    return pd.DataFrame(out)
