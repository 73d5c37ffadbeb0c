"""Class sensitivity: the random logit test of Sixt, Granz and Landgraf, "When Explanations Lie:
Why Many Modified BP Attributions Fail", ICML 2020, https://arxiv.org/abs/1912.09818.

For each image, a class c' drawn uniformly from the classes other than the explained class c
(seeded: the run's seed, this metric's own generator), the method's map L_c' for c' on the same
image, and the similarity of the two maps:

    class_similarity = sim(L_c, L_c')       (lower is better)

A method whose map does not depend on the class (an edge detector, a map of the activations only)
gives 1; a mean class_similarity of 0.9 or more fails the test and the run's summary flags it
(``edgecam fails (1.000 >= 0.9)``; Grad-CAM on the shipped resnet18 scores about 0.3). ``similarity``:

- ``ssim`` (default; as Sixt et al., Quantus's RandomLogit and Adebayo et al.'s model
  randomisation): the mean structural similarity (Wang et al. 2004) over 11 x 11 Gaussian windows
  (sigma 1.5, truncated at 11 taps, normalised), data range 1, K1 = 0.01, K2 = 0.03, population
  (co)variances, over the windows that lie inside the map (no padding): the defaults of
  torchmetrics and of ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)``, which it matches (test). Written here, batched on
  the device (torchmetrics is not a dependency). Maps need at least 11 x 11 pixels.
- ``spearman``: the Spearman rank correlation over pixels (average ranks for ties, as
  ``scipy.stats.spearmanr``); NaN where either map is constant (undefined), skipped by the means.

The number of classes is the width of the clean logits. Cost: one more map per image (the
method's own cost, e.g. 1F + 1B for Grad-CAM), batched as one call of the method on the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from cambench.metrics.base import Metric, MetricError, MetricInput, register
from cambench.metrics.correlation import spearman

SIMILARITIES = ("ssim", "spearman")


def other_classes(targets: Tensor, classes: int, generator: torch.Generator) -> Tensor:
    """A class (B,) uniform over the ``classes - 1`` classes other than each target."""
    shift = torch.randint(1, classes, targets.shape, generator=generator, device=targets.device)
    return (targets + shift) % classes


def gaussian_window(
    size: int, sigma: float, dtype: torch.dtype = torch.float64, device: torch.device | None = None
) -> Tensor:
    """The normalised 1-D Gaussian (size,) of scipy.ndimage's gaussian_filter and torchmetrics."""
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def banded(kernel: Tensor, n: int) -> Tensor:
    """The (n - k + 1, n) matrix whose product with a length-n signal is its valid correlation with
    ``kernel`` (k,): row i holds the kernel at columns i..i+k-1."""
    k = kernel.numel()
    columns = torch.arange(n - k + 1, device=kernel.device)[:, None] + torch.arange(k, device=kernel.device)
    out = torch.zeros(n - k + 1, n, dtype=kernel.dtype, device=kernel.device)
    return out.scatter_(1, columns, kernel.expand(n - k + 1, k))


def ssim(
    a: Tensor,
    b: Tensor,
    window: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Mean SSIM (B,) of maps ``a`` and ``b`` (B, H, W) over the Gaussian windows inside the map
    (population statistics, as skimage with use_sample_covariance=False and torchmetrics)."""
    if min(a.shape[-2:]) < window:
        raise ValueError(f"SSIM needs maps of at least {window} x {window} pixels, got {tuple(a.shape[-2:])}")
    a, b = a.double(), b.double()
    g = gaussian_window(window, sigma, a.dtype, a.device)
    stack = torch.stack([a, b, a * a, b * b, a * b], 1)  # (B, 5, H, W): one separable blur for all five
    # the valid separable blur as two matrix products with banded matrices: 2.4x faster than float64
    # depthwise convolutions on a CPU, equal to them within float64 rounding
    blurred = banded(g, a.shape[-2]) @ stack @ banded(g, a.shape[-1]).T
    mu_a, mu_b, aa, bb, ab = blurred.unbind(1)
    var_a, var_b, cov = aa - mu_a * mu_a, bb - mu_b * mu_b, ab - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1).float()


def similarity(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """Per-image similarity (B,) of two batches of maps (B, H, W): ``ssim`` or ``spearman``."""
    return ssim(a, b) if kind == "ssim" else spearman(a, b)


@register("class_sensitivity")
class ClassSensitivity(Metric):
    """The random logit test: similarity of the maps for the explained class and a random other
    class (lower is better); see the module docstring."""

    names = ("class_similarity",)
    lower_is_better = frozenset({"class_similarity"})
    # a map that hardly depends on the class fails the test: flagged in the summary
    fails_at: ClassVar[dict[str, float]] = {"class_similarity": 0.9}
    requires = frozenset({"model", "new_maps"})  # the map for another class

    @dataclass
    class Params(Metric.Params):
        similarity: str = "ssim"

        def check(self) -> None:
            if self.similarity not in SIMILARITIES:
                raise MetricError(
                    f"class_sensitivity's similarity must be one of {', '.join(SIMILARITIES)}, got {self.similarity!r}"
                )

    def score(self, batch: MetricInput) -> dict[str, Tensor]:
        classes = batch.logits.shape[1]
        if classes < 2:
            raise MetricError("class_sensitivity needs a model with at least two classes")
        other = other_classes(batch.targets, classes, self.generator(batch.targets.device))
        again = self.ctx.method.explain(batch.images, other, batch.ids)
        return {"class_similarity": similarity(batch.maps, again.maps, self.similarity)}
