"""Deletion and insertion AUC. Petsiuk et al., "RISE: Randomized Input Sampling for
Explanation of Black-box Models", BMVC 2018, https://arxiv.org/abs/1806.07421 (protocol of
the official code, eclique/RISE).

Pixels are ranked by descending saliency. At step i = 0..n the top min(i * ceil(HW / n), HW)
pixels are taken from ``finish`` and the rest from ``start``; the curve is the softmax
probability of the target class, and the score its trapezoid area on [0, 1]:

    AUC = (sum_i p_i - p_0 / 2 - p_n / 2) / n

Deletion: start = image, finish = zeros (the mean colour in normalised space); lower is better.
Insertion: start = blur(image) (Gaussian, kernel 11, sigma 5, zero padding), finish = image;
higher is better. Ties in saliency keep pixel order (stable sort). All (n + 1) perturbed copies
of a batch are scored on the device in forward batches of the scorer's size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cambench.metrics.base import Metric, MetricInput, Scorer, register


def gaussian_blur(images: Tensor, kernel_size: int = 11, sigma: float = 5.0) -> Tensor:
    """Per-channel Gaussian blur with zero padding, as RISE's substrate function."""
    x = torch.arange(kernel_size, dtype=images.dtype, device=images.device) - kernel_size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    channels = images.shape[1]
    kernel = (g[:, None] * g[None, :]).expand(channels, 1, kernel_size, kernel_size)
    return F.conv2d(images, kernel, padding=kernel_size // 2, groups=channels)


def pixel_ranks(saliency: Tensor) -> Tensor:
    """Rank of every pixel in descending saliency order, (B, H*W); ties keep pixel order."""
    flat = saliency.flatten(1)
    order = flat.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def perturbation_curve(
    scorer: Scorer, start: Tensor, finish: Tensor, saliency: Tensor, targets: Tensor, steps: int
) -> Tensor:
    """Target probability after moving the top-ranked pixels from ``start`` to ``finish``.

    Returns (B, steps + 1): point i has min(i * ceil(HW / steps), HW) pixels taken from ``finish``.
    """
    b, _c, h, w = start.shape
    ranks = pixel_ranks(saliency).view(b, 1, h, w)
    per_step = math.ceil(h * w / steps)
    counts = (torch.arange(steps + 1, device=start.device) * per_step).clamp(max=h * w)
    points_per_chunk = max(1, scorer.batch_size // b)
    curve = []
    for chunk in counts.split(points_per_chunk):
        moved = ranks[None] < chunk.view(-1, 1, 1, 1, 1)  # (m, B, 1, H, W)
        perturbed = torch.where(moved, finish[None], start[None]).flatten(0, 1)
        curve.append(scorer(perturbed, targets.repeat(len(chunk))).view(len(chunk), b))
    return torch.cat(curve).T


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
) -> dict[str, Tensor]:
    """Per-image deletion and insertion AUC, (B,) each."""
    deletion = perturbation_curve(scorer, images, torch.zeros_like(images), saliency, targets, steps)
    blurred = gaussian_blur(images, blur_kernel, blur_sigma)
    insertion = perturbation_curve(scorer, blurred, images, saliency, targets, steps)
    return {"deletion": auc(deletion), "insertion": auc(insertion)}


@register("deletion_insertion")
class DeletionInsertion(Metric):
    """Deletion (lower is better) and insertion (higher is better) AUC; see the module docstring."""

    names = ("deletion", "insertion")

    def __init__(self, steps: int = 224, blur_kernel: int = 11, blur_sigma: float = 5.0):
        if steps < 1:
            raise ValueError(f"deletion_insertion.steps must be >= 1, got {steps}")
        super().__init__()
        self.steps, self.blur_kernel, self.blur_sigma = steps, blur_kernel, blur_sigma

    def score(self, batch: MetricInput) -> dict[str, Tensor]:
        return deletion_insertion(
            batch.scorer, batch.images, batch.maps, batch.targets, self.steps, self.blur_kernel, self.blur_sigma
        )
