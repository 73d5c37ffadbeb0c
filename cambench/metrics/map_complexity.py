"""Map complexity: Sparseness (Gini index) and Complexity (entropy) of the map itself, no model call.

- Sparseness: Chalasani, Chen, Chowdhury, Wu and Jha, "Concise Explanations of Neural Networks
  using Adversarial Training", ICML 2020, https://arxiv.org/abs/1810.06583. The Gini index of the
  n = H W values of the map sorted ascending, x_(1) <= ... <= x_(n):

      G = sum_i (2 i - n - 1) x_(i) / (n sum_i x_(i))

  0 for a uniform map, (n - 1) / n for a one-hot map; higher is sparser (better).
- Complexity: Bhatt, Weller and Moura, "Evaluating and Aggregating Feature-based Model
  Explanations", IJCAI 2020, https://arxiv.org/abs/2005.00631. The Shannon entropy (natural log)
  of the map normalised to a distribution, p_i = x_i / sum_j x_j:

      E = -sum_i p_i log p_i        (0 log 0 = 0)

  0 for a one-hot map, log n for a uniform map; lower is simpler (better).

Both as Quantus 0.6 computes them (``Sparseness``, ``Complexity``) with two numerical differences:
Quantus adds 1e-7 to every value before the Gini index (a relative change of about 1e-7 / mean(L))
and takes log(p + 1e-12) instead of 0 log 0 = 0. Quantus's defaults abs=True and normalise=True
(divide by the maximum) change nothing here: the maps are non-negative and both measures are
scale-invariant. A constant-zero map (a method whose map is all zero after ReLU) gives NaN for
both: it is no distribution, and the Gini index is 0 / 0 (Quantus gives G = 0 there, from its
epsilon, and NaN entropy); the run's means skip NaN. The maps are the run's (B, H, W) maps in
[0, 1] at input resolution; no method or model call.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cambench.metrics.base import Metric, MetricInput, register


def gini(maps: Tensor) -> Tensor:
    """Gini index (B,) of each flattened map (B, ...) of non-negative values; NaN for an all-zero map."""
    flat = maps.flatten(1).double().sort(1).values
    n = flat.shape[1]
    weights = 2 * torch.arange(1, n + 1, device=flat.device, dtype=flat.dtype) - n - 1
    total = flat.sum(1)
    value = (flat * weights).sum(1) / (n * total)
    return torch.where(total > 0, value, torch.nan).float()


def entropy(maps: Tensor) -> Tensor:
    """Shannon entropy (B,), natural log, of each flattened map (B, ...) of non-negative values
    normalised to sum 1 (0 log 0 = 0); NaN for an all-zero map."""
    flat = maps.flatten(1).double()
    total = flat.sum(1, keepdim=True)
    p = flat / total.clamp_min(torch.finfo(flat.dtype).tiny)
    value = -torch.special.xlogy(p, p).sum(1)
    return torch.where(total[:, 0] > 0, value, torch.nan).float()


@register("map_complexity")
class MapComplexity(Metric):
    """Sparseness (Gini index, higher is better) and entropy (lower is better) of the maps; see the
    module docstring."""

    names = ("sparseness", "entropy")
    requires = frozenset()  # the maps alone
    lower_is_better = frozenset({"entropy"})

    def score(self, batch: MetricInput) -> dict[str, Tensor]:
        return {"sparseness": gini(batch.maps), "entropy": entropy(batch.maps)}
