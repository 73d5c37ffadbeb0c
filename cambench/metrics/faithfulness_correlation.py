"""Faithfulness correlation. Bhatt, Weller and Moura, "Evaluating and Aggregating Feature-based
Model Explanations", IJCAI 2020, https://arxiv.org/abs/2005.00631 (Quantus's
``FaithfulnessCorrelation`` defaults: 100 subsets of 224 pixels, black baseline, logits).

    FC = corr_S ( sum_{i in S} L_i ,  f_c(x) - f_c(x_[S = baseline]) )

over ``runs`` random pixel subsets S of ``subset`` pixels (every channel of a pixel replaced), the
Pearson correlation over the subsets, per image (higher is better; NaN where either side is
constant, e.g. a constant map). f_c is the target's logit (``output="logit"``) or softmax
probability. Baselines: ``black`` (RGB 0 through the preprocessing), ``zeros`` (0 in the normalised
space, the dataset's mean colour), ``mean`` (the image's mean colour) or ``uniform`` (seeded noise
in [0, 1] pixels); see :mod:`cambench.metrics.substrates`. The subsets are seeded by
the run; ``runs`` forward passes per image, batched through the run's scorer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cambench.metrics.base import Metric, MetricError, MetricInput, register
from cambench.metrics.correlation import pearson
from cambench.metrics.substrates import substrate
from cambench.models.scorer import OUTPUTS, Scorer, class_scores, expand_rows, owners

BASELINES = ("black", "zeros", "mean", "uniform")
CHUNK = 256  # rows of random keys drawn at a time


def random_subsets(shape: tuple[int, int], runs: int, subset: int, generator: torch.Generator) -> Tensor:
    """(B, runs, subset) pixel indices, each run ``subset`` distinct pixels drawn uniformly, seeded
    (the top keys of uniform draws, a few hundred rows at a time to bound memory)."""
    b, pixels = shape
    rows = b * runs
    picked = torch.empty(rows, subset, dtype=torch.long, device=generator.device)
    for start in range(0, rows, CHUNK):
        keys = torch.rand(min(CHUNK, rows - start), pixels, generator=generator, device=generator.device)
        picked[start : start + CHUNK] = keys.topk(subset, dim=1).indices
    return picked.view(b, runs, subset)


def faithfulness_correlation(
    scorer: Scorer,
    images: Tensor,
    maps: Tensor,
    targets: Tensor,
    baseline: Tensor,
    subsets: Tensor,
    clean: Tensor,
    output: str,
) -> Tensor:
    """Per-image FC (B,) for ``subsets`` (B, R, n) pixel indices replaced by ``baseline`` (B, C, H, W);
    ``clean`` (B,) the target scores on the images."""
    h, w = images.shape[-2:]
    runs = subsets.shape[1]

    def perturbed(rows: slice) -> tuple[Tensor]:
        image, run = owners(rows, runs, images.device)
        removed = torch.zeros(len(image), h * w, dtype=torch.bool, device=images.device)
        removed.scatter_(1, subsets[image, run], True)
        removed = removed.view(-1, 1, h, w)
        return (torch.where(removed, expand_rows(baseline, rows, runs), expand_rows(images, rows, runs)),)

    drops = clean[:, None] - scorer.score_rows(targets, runs, perturbed, output=output)
    mass = maps.flatten(1).double().gather(1, subsets.flatten(1)).view(subsets.shape).sum(-1)
    return pearson(mass, drops)


@register("faithfulness_correlation")
class FaithfulnessCorrelation(Metric):
    """Bhatt et al.'s faithfulness correlation; see the module docstring."""

    names = ("faithfulness_correlation",)

    @dataclass
    class Params(Metric.Params):
        runs: int = 100
        subset: int = 224
        baseline: str = "black"
        output: str = "logit"

        def check(self) -> None:
            if self.runs < 2 or self.subset < 1:
                raise MetricError(
                    f"faithfulness_correlation needs runs >= 2 and subset >= 1, got {self.runs} and {self.subset}"
                )
            if self.baseline not in BASELINES or self.output not in OUTPUTS:
                raise MetricError(
                    f"faithfulness_correlation: baseline must be one of {', '.join(BASELINES)} and output one of "
                    f"{', '.join(OUTPUTS)}, got {self.baseline!r} and {self.output!r}"
                )

    def score(self, batch: MetricInput) -> dict[str, Tensor]:
        images = batch.images
        b, _, h, w = images.shape
        if self.subset > h * w:
            raise MetricError(
                f"faithfulness_correlation.subset={self.subset} is more than the {h * w} pixels of an image: "
                "choose a smaller subset"
            )
        subsets = random_subsets((b, h * w), self.runs, self.subset, self.generator(images.device))
        clean = class_scores(batch.logits, batch.targets, self.output)
        baseline = substrate(self.baseline, images, self.ctx.preprocessing, self.generator(images.device))
        value = faithfulness_correlation(
            self.ctx.scorer, images, batch.maps, batch.targets, baseline, subsets, clean, self.output
        )
        return {"faithfulness_correlation": value}
