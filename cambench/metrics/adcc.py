"""Coherency, Complexity and ADCC. Poppi, Cornia, Baraldi and Cucchiara, "Revisiting The
Evaluation of Class Activation Mapping for Explainability: A Novel Metric and Experimental
Analysis", CVPR Workshops 2021, https://arxiv.org/abs/2104.10252 (released code: aimagelab/ADCC).

With L the map of x (in [0, 1], input size) and L' the map the same method gives for x * L (the
model input times the map) and the same class:

    Coherency   C = (r(L, L') + 1) / 2, r the Pearson correlation over pixels (higher is better);
                the released code's mapping to [0, 1] (the paper-era code used |r|); 0 where r is
                undefined (a constant map), as the code's NaN rule
    Complexity  X = sum |L| / (H W), the mean of the map (lower is better)
    ADCC        3 / (1 / C + 1 / (1 - X) + 1 / (1 - AD)), the harmonic mean (higher is better)

AD is the Average Drop of :mod:`cambench.metrics.confidence`, with O read from the logits of the
method's own pass on x * L (the pass that gives L'), so ADCC costs one more map per image and no
other forward pass; Increase in Confidence and Average Gain come from the same O. The class is the
run's explained class: the class predicted on x by default (``runner.target=prediction``, the
released code), the label with ``runner.target=label``.

Two aggregations, named apart because the literature uses both: ``adcc_per_image`` is the mean of
per-image ADCC (the released code), ``adcc_of_means`` is ADCC of the dataset means of C, X and
AD (the paper's tables, Recipro-CAM's code); its interval comes from the same bootstrap resamples.
A sanity check from the definitions: Fake-CAM (L = 1 except one pixel) gives L' = L, C = 1,
X = (HW - 1) / HW, AD about 0, so ADCC = 3 / (2 + HW), about 6e-5 at 224 px.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from cambench.metrics.base import Metric, MetricInput, register
from cambench.metrics.confidence import NAMES, confidence_changes, explanation_inputs
from cambench.metrics.correlation import pearson
from cambench.models.scorer import class_scores


def coherency(maps: Tensor, again: Tensor) -> Tensor:
    """(r + 1) / 2 per image (B,), r the Pearson correlation of ``maps`` and ``again`` (B, H, W)
    over pixels; 0 where either map is constant (r undefined)."""
    r = pearson(maps, again)
    return torch.where(r.isnan(), 0.0, (r + 1) / 2)


def complexity(maps: Tensor) -> Tensor:
    """sum |L| / (H W) per image (B,)."""
    return maps.flatten(1).abs().double().mean(1).float()


def adcc(coherency: Tensor, complexity: Tensor, average_drop: Tensor) -> Tensor:
    """The harmonic mean of coherency, 1 - complexity and 1 - average drop (0 where one of them is 0)."""
    terms = torch.stack([coherency, 1 - complexity, 1 - average_drop]).double()
    return (3 / (1 / terms).sum(0)).float()


def adcc_of_means(means: dict[str, Tensor]) -> Tensor:
    """ADCC of the dataset means (the paper's tables): ``means`` maps a column to its mean(s)."""
    return adcc(means["coherency"], means["complexity"], means["average_drop"])


@register("adcc")
class ADCC(Metric):
    """Average Drop, Increase in Confidence, Average Gain, Coherency, Complexity and ADCC (both
    aggregations); see the module docstring."""

    names = (*NAMES, "coherency", "complexity", "adcc_per_image")
    lower_is_better = frozenset({"average_drop", "complexity"})
    requires = frozenset({"model", "new_maps"})  # coherency: the map of x * L
    derived: ClassVar[dict[str, Callable[[dict[str, Tensor]], Tensor]]] = {"adcc_of_means": adcc_of_means}

    def score(self, batch: MetricInput) -> dict[str, Tensor]:
        again = self.ctx.method.explain(explanation_inputs(batch.images, batch.maps), batch.targets, batch.ids)
        clean = class_scores(batch.logits, batch.targets, "log_odds")
        values = confidence_changes(clean, class_scores(again.logits, batch.targets, "log_odds"))
        values["coherency"] = coherency(batch.maps, again.maps)
        values["complexity"] = complexity(batch.maps)
        values["adcc_per_image"] = adcc(values["coherency"], values["complexity"], values["average_drop"])
        return values
