"""Summary statistics of per-image scores: mean and a percentile bootstrap interval."""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor


def bootstrap_ci(values: Tensor, resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (N,), NaNs dropped."""
    values = values[~values.isnan()].double()
    if values.numel() == 0:
        return float("nan"), float("nan")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    idx = torch.randint(values.numel(), (resamples, values.numel()), generator=generator)
    means = values[idx].mean(1)
    tail = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=means.dtype))
    return lo.item(), hi.item()


def summarise(rows: pd.DataFrame, metrics: list[str], resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per metric: n, mean, and the 95% bootstrap interval."""
    out = []
    for name in metrics:
        values = torch.tensor(rows[name].to_numpy(dtype=float))
        lo, hi = bootstrap_ci(values, resamples, seed=seed)
        out.append(
            {
                "metric": name,
                "n": int((~values.isnan()).sum()),
                "mean": values.nanmean().item(),
                "ci95_low": lo,
                "ci95_high": hi,
            }
        )
    return pd.DataFrame(out)
