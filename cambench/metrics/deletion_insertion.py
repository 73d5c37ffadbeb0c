"""Deletion and insertion AUC. Petsiuk et al., "RISE: Randomized Input Sampling for
Explanation of Black-box Models", BMVC 2018, https://arxiv.org/abs/1806.07421 (protocol of
the official code, eclique/RISE).

Pixels are ranked by descending saliency, ties in a seeded random order (Grad-CAM maps are
often half exact zeros, and raster order would favour the top rows). At step i = 0..n the top
round(i * HW / n) pixels are taken from ``finish`` and the rest from ``start``, so point i lies
exactly at x = i / n; the curve is the softmax probability of the target class and the score
its trapezoid area on [0, 1]:

    AUC = (sum_i p_i - p_0 / 2 - p_n / 2) / n

Deletion: start = image, finish = zeros (the mean colour in normalised space); lower is better.
Insertion: start = blur(image), finish = image; higher is better. The blur is RISE's: its
kernel is ``scipy.ndimage.gaussian_filter`` of an 11 x 11 delta with sigma 5 (reflected,
truncated at 4 sigma), applied per channel with zero padding. The (n + 1) perturbed copies of
every image are built chunk by chunk and scored by the run's scorer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cambench.data.blur import gaussian_blur
from cambench.metrics.base import Metric, MetricContext, MetricError, MetricInput, register
from cambench.models.scorer import Scorer, expand_rows, owners


def pixel_ranks(saliency: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Rank (B, H*W) of every pixel in descending saliency order; ties in a random order drawn from ``generator``."""
    flat = saliency.flatten(1)
    shuffle = torch.rand(flat.shape, generator=generator, device=flat.device).argsort(1)
    order = shuffle.gather(1, flat.gather(1, shuffle).argsort(dim=1, descending=True, stable=True))
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def step_counts(pixels: int, steps: int, device: torch.device | None = None) -> Tensor:
    """round(i * pixels / steps) for i = 0..steps (halves round up)."""
    i = torch.arange(steps + 1, device=device)
    return (2 * i * pixels + steps) // (2 * steps)


def perturbation_curve(
    scorer: Scorer, start: Tensor, finish: Tensor, ranks: Tensor, targets: Tensor, steps: int
) -> Tensor:
    """Target probability (B, steps + 1) after moving the round(i * HW / steps) top-ranked pixels
    from ``start`` to ``finish``; ``ranks`` (B, H*W) from :func:`pixel_ranks`."""
    b, _, h, w = start.shape
    ranks = ranks.view(b, 1, h, w)
    counts = step_counts(h * w, steps, start.device)

    def perturbed(rows: slice) -> tuple[Tensor]:
        _, step = owners(rows, steps + 1, start.device)
        moved = expand_rows(ranks, rows, steps + 1) < counts[step].view(-1, 1, 1, 1)
        return (torch.where(moved, expand_rows(finish, rows, steps + 1), expand_rows(start, rows, steps + 1)),)

    return scorer.score_rows(targets, steps + 1, perturbed, output="probability")


def auc(curve: Tensor) -> Tensor:
    """Trapezoid area of (B, n + 1) curves sampled evenly on [0, 1]."""
    return (curve.sum(1) - curve[:, 0] / 2 - curve[:, -1] / 2) / (curve.shape[1] - 1)


def deletion_insertion(
    scorer: Scorer,
    images: Tensor,
    saliency: Tensor,
    targets: Tensor,
    steps: int = 224,
    blur_kernel: int = 11,
    blur_sigma: float = 5.0,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Per-image deletion and insertion AUC, (B,) each."""
    ranks = pixel_ranks(saliency, generator)
    deletion = perturbation_curve(scorer, images, torch.zeros_like(images), ranks, targets, steps)
    blurred = gaussian_blur(images, blur_kernel, blur_sigma)
    insertion = perturbation_curve(scorer, blurred, images, ranks, targets, steps)
    return {"deletion": auc(deletion), "insertion": auc(insertion)}


@register("deletion_insertion")
class DeletionInsertion(Metric):
    """Deletion (lower is better) and insertion (higher is better) AUC; see the module docstring."""

    names = ("deletion", "insertion")
    lower_is_better = frozenset({"deletion"})

    def __init__(self, ctx: MetricContext, steps: int = 224, blur_kernel: int = 11, blur_sigma: float = 5.0):
        super().__init__(ctx)
        self.steps, self.blur_kernel, self.blur_sigma = steps, blur_kernel, blur_sigma

    @classmethod
    def check(cls, steps: int = 224, blur_kernel: int = 11, blur_sigma: float = 5.0) -> None:
        if steps < 1:
            raise MetricError(f"deletion_insertion.steps must be >= 1, got {steps}")
        if blur_kernel < 1 or blur_kernel % 2 == 0 or blur_sigma <= 0:
            raise MetricError(
                "deletion_insertion needs an odd blur_kernel >= 1 and blur_sigma > 0, "
                f"got {blur_kernel} and {blur_sigma}"
            )

    def score(self, batch: MetricInput) -> dict[str, Tensor]:
        return deletion_insertion(
            self.ctx.scorer,
            batch.images,
            batch.maps,
            batch.targets,
            self.steps,
            self.blur_kernel,
            self.blur_sigma,
            self.generator(batch.images.device),
        )
