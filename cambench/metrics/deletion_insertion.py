"""Deletion and insertion AUC. Petsiuk et al., "RISE: Randomized Input Sampling for
Explanation of Black-box Models", BMVC 2018, https://arxiv.org/abs/1806.07421 (protocol of
the official code, eclique/RISE), with the variants papers use.

Pixels are ranked by descending saliency, ties in a seeded random order (Grad-CAM maps are
often half exact zeros, and raster order would favour the top rows). At point i the c_i
top-ranked pixels are taken from ``finish`` and the rest from ``start``; the curve is the target
class's softmax probability (or logit) and the score its trapezoid area with x_i = i / n:

    AUC = (sum_i p_i - p_first / 2 - p_last / 2) / n

- ``steps`` n: c_i = round(i * HW / n), i = 0..n, so point i lies exactly at x = i / n;
  ``pixels_per_step`` s instead: n = ceil(HW / s) and c_i = min(i * s, HW), as RISE's code does
  (its last step may move fewer pixels; the area still takes x_i = i / n).
- ``final_point=False`` drops the point i = n (Poppi et al.'s code scores 0%, 1%, ..., 99% and
  takes ``sklearn.metrics.auc`` on arange(0, 1, 0.01): the area on [0, 0.99]).
- Deletion: start = image, finish = ``deletion_substrate``; lower is better. Insertion:
  start = ``insertion_substrate``, finish = image; higher is better. Substrates: see
  :mod:`cambench.metrics.substrates` (RISE: zeros and a blur of kernel 11, sigma 5).
- ``lerf``: also the least-relevant-first curves (ranks reversed), and the area between each pair:
  deletion_between = deletion_lerf - deletion, insertion_between = insertion - insertion_lerf
  (higher is better for both).

The perturbed copies of every image are built chunk by chunk and scored by the run's scorer;
(points) forward passes per image per curve. The metric keeps the mean curves for plotting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cambench.metrics.base import Metric, MetricError, MetricInput, register
from cambench.metrics.substrates import SUBSTRATES, substrate
from cambench.models.scorer import OUTPUTS, Scorer, expand_rows, owners


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


def curve_points(
    pixels: int, steps: int, pixels_per_step: int | None, final_point: bool, device: torch.device | None = None
) -> tuple[Tensor, int]:
    """Pixels moved at each point of a curve, and the number of intervals n (point i at x = i / n): ``steps``
    steps, or ``pixels_per_step`` pixels a step where it is not None (the metric's parameters)."""
    if pixels_per_step is None:
        counts = step_counts(pixels, steps, device)
    else:
        steps = math.ceil(pixels / pixels_per_step)
        counts = (torch.arange(steps + 1, device=device) * pixels_per_step).clamp(max=pixels)
    return (counts if final_point else counts[:-1]), steps


def perturbation_curve(
    scorer: Scorer,
    start: Tensor,
    finish: Tensor,
    ranks: Tensor,
    targets: Tensor,
    counts: Tensor,
    output: str,
) -> Tensor:
    """Target score (B, points) after moving the ``counts[i]`` top-ranked pixels from ``start`` to
    ``finish``; ``ranks`` (B, H*W) from :func:`pixel_ranks`."""
    b, _, h, w = start.shape
    ranks = ranks.view(b, 1, h, w)
    points = len(counts)
    counts = counts.to(start.device)

    def perturbed(rows: slice) -> tuple[Tensor]:
        _, point = owners(rows, points, start.device)
        moved = expand_rows(ranks, rows, points) < counts[point].view(-1, 1, 1, 1)
        return (torch.where(moved, expand_rows(finish, rows, points), expand_rows(start, rows, points)),)

    return scorer.score_rows(targets, points, perturbed, output=output)


def auc(curve: Tensor, intervals: int | None = None) -> Tensor:
    """Trapezoid area of (B, points) curves with point i at x = i / intervals (default: points - 1, on [0, 1])."""
    intervals = curve.shape[1] - 1 if intervals is None else intervals
    return (curve.sum(1) - curve[:, 0] / 2 - curve[:, -1] / 2) / intervals


def deletion_insertion_curves(
    scorer: Scorer,
    images: Tensor,
    ranks: Tensor,
    targets: Tensor,
    deletion_substrate: Tensor,
    insertion_substrate: Tensor,
    counts: Tensor,
    output: str,
    lerf: bool,
) -> dict[str, Tensor]:
    """The curves (B, points): deletion and insertion, and with ``lerf`` their least-relevant-first twins."""
    orders = {"": ranks} | ({"_lerf": ranks.shape[1] - 1 - ranks} if lerf else {})
    curves = {}
    for suffix, order in orders.items():
        curves[f"deletion{suffix}"] = perturbation_curve(
            scorer, images, deletion_substrate, order, targets, counts, output
        )
        curves[f"insertion{suffix}"] = perturbation_curve(
            scorer, insertion_substrate, images, order, targets, counts, output
        )
    return curves


def areas(curves: dict[str, Tensor], intervals: int) -> dict[str, Tensor]:
    """AUC (B,) of each curve, and the areas between the orderings where both are there."""
    out = {name: auc(curve, intervals) for name, curve in curves.items()}
    if "deletion_lerf" in out:
        out["deletion_between"] = out["deletion_lerf"] - out["deletion"]
        out["insertion_between"] = out["insertion"] - out["insertion_lerf"]
    return out


@register("deletion_insertion")
class DeletionInsertion(Metric):
    """Deletion (lower is better) and insertion (higher is better) AUC; see the module docstring."""

    names = ("deletion", "insertion", "deletion_lerf", "insertion_lerf", "deletion_between", "insertion_between")
    lower_is_better = frozenset({"deletion", "insertion_lerf"})
    accumulators = ("_curves", "_counted", "_x")  # the mean curves: saved per batch for resumed runs

    @dataclass
    class Params(Metric.Params):
        # 16 steps (3136 pixels a step at 224 px): fast enough for the default run; RISE's own 224 pixels a
        # step is metrics=rise (pixels_per_step=224), Poppi et al.'s 1% steps metrics=poppi
        steps: int = 16
        pixels_per_step: int | None = None
        final_point: bool = True
        deletion_substrate: str = "zeros"
        insertion_substrate: str = "blur"
        blur_kernel: int = 11
        blur_sigma: float = 5.0
        output: str = "probability"
        lerf: bool = False

        def check(self) -> None:
            if self.steps < 1 or (self.pixels_per_step is not None and self.pixels_per_step < 1):
                raise MetricError(
                    "deletion_insertion.steps and pixels_per_step must be >= 1, "
                    f"got {self.steps} and {self.pixels_per_step}"
                )
            if self.blur_kernel < 1 or self.blur_kernel % 2 == 0 or self.blur_sigma <= 0:
                raise MetricError(
                    "deletion_insertion needs an odd blur_kernel >= 1 and blur_sigma > 0, "
                    f"got {self.blur_kernel} and {self.blur_sigma}"
                )
            for which in ("deletion_substrate", "insertion_substrate"):
                if (name := getattr(self, which)) not in SUBSTRATES:
                    raise MetricError(
                        f"deletion_insertion.{which} must be one of {', '.join(SUBSTRATES)}, got {name!r}"
                    )
            if self.output not in OUTPUTS:
                raise MetricError(f"deletion_insertion.output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")

    def setup(self) -> None:
        self.substrates = (self.deletion_substrate, self.insertion_substrate)
        self._curves: dict[str, Tensor] = {}
        self._counted: dict[str, Tensor] = {}
        self._x: Tensor | None = None

    @classmethod
    def columns(cls, params: Params) -> tuple[str, ...]:
        return cls.names if params.lerf else cls.names[:2]

    def score(self, batch: MetricInput) -> dict[str, Tensor]:
        images = batch.images
        h, w = images.shape[-2:]
        counts, intervals = curve_points(h * w, self.steps, self.pixels_per_step, self.final_point, images.device)
        if len(counts) < 2:
            raise MetricError(
                "deletion_insertion with final_point=false needs at least 2 steps: raise steps or lower pixels_per_step"
            )
        generator = self.generator(images.device)
        deletion, insertion = (
            substrate(name, images, self.ctx.preprocessing, generator, self.blur_kernel, self.blur_sigma)
            for name in self.substrates
        )
        ranks = pixel_ranks(batch.maps, generator)
        curves = deletion_insertion_curves(
            self.ctx.scorer, images, ranks, batch.targets, deletion, insertion, counts, self.output, self.lerf
        )
        self._accumulate(curves, torch.arange(len(counts), device=images.device) / intervals)
        return areas(curves, intervals)

    def _accumulate(self, curves: dict[str, Tensor], x: Tensor) -> None:
        self._x = x.cpu()
        for name, curve in curves.items():
            finite = curve.isfinite()
            total = torch.where(finite, curve, 0.0).sum(0).detach().cpu()
            self._curves[name] = self._curves.get(name, 0) + total
            self._counted[name] = self._counted.get(name, 0) + finite.sum(0).cpu()

    def curves(self) -> dict[str, tuple[Tensor, Tensor]]:
        return {name: (self._x, total / self._counted[name]) for name, total in self._curves.items()}
