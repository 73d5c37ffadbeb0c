"""Correlations of maps, batched: Pearson and Spearman per row, in float64, NaN where a side is constant."""

from __future__ import annotations

import torch
from torch import Tensor


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation (B,) of ``a`` and ``b`` (B, ...) over all but the first dim; NaN where either is constant."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    norms = a.norm(dim=1) * b.norm(dim=1)
    r = (a * b).sum(1) / norms.clamp_min(1e-300)
    return torch.where(norms > 0, r.clamp(-1, 1), torch.nan).float()


def average_ranks(values: Tensor) -> Tensor:
    """Ranks 1..n (B, n) along the last dim of (B, n) values, ties given their average rank."""
    batch, n = values.shape
    ordered, order = values.sort(1)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    groups = (starts.cumsum(1) - 1) + n * torch.arange(batch, device=values.device)[:, None]  # unique per row
    position = torch.arange(1, n + 1, device=values.device, dtype=torch.float64).expand(batch, n)
    sums = torch.zeros(batch * n, dtype=torch.float64, device=values.device).index_add_(
        0, groups.flatten(), position.flatten()
    )
    counts = torch.zeros_like(sums).index_add_(0, groups.flatten(), torch.ones_like(position).flatten())
    mean_rank = (sums / counts.clamp_min(1))[groups]
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation (B,) of maps ``a`` and ``b`` (B, ...) over pixels; NaN where either is constant."""
    return pearson(average_ranks(a.flatten(1)), average_ranks(b.flatten(1)))
