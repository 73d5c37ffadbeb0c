"""Infidelity. Yeh, Hsieh, Suggala, Inouye and Ravikumar, "On the (In)fidelity and Sensitivity of
Explanations", NeurIPS 2019, https://arxiv.org/abs/1901.09392, as Captum's
``captum.metrics.infidelity`` computes it (``normalize=False``):

    INFD = (1 / N) sum_n ( sum_j L_j I_nj  -  (f_c(x) - f_c(x - I_n)) )^2

with N seeded perturbations I_n ~ N(0, sigma^2) of the model input (every channel of every pixel;
the paper's noisy-baseline perturbation) and the map L broadcast over channels; f_c is the
target's logit (``output="logit"``, Captum's forward function returns what the model returns) or
its softmax probability. Lower is better. ``samples`` forward passes per image, batched through
the run's scorer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cambench.metrics.base import Metric, MetricError, MetricInput, register
from cambench.models.scorer import OUTPUTS, Scorer, class_scores, expand_rows, owners


def infidelity(
    scorer: Scorer, images: Tensor, maps: Tensor, targets: Tensor, noise: Tensor, clean: Tensor, output: str
) -> Tensor:
    """Per-image infidelity (B,) for perturbations ``noise`` (B, N, C, H, W); ``clean`` (B,) the
    target scores on the images."""
    samples = noise.shape[1]

    def perturbed(rows: slice) -> tuple[Tensor]:
        image, sample = owners(rows, samples, images.device)
        return (expand_rows(images, rows, samples) - noise[image, sample],)

    drops = clean[:, None].double() - scorer.score_rows(targets, samples, perturbed, output=output).double()
    explained = (noise.double() * maps[:, None, None].double()).sum((2, 3, 4))
    return ((explained - drops) ** 2).mean(1).float()


@register("infidelity")
class Infidelity(Metric):
    """Yeh et al.'s infidelity with Gaussian perturbations; see the module docstring."""

    names = ("infidelity",)
    lower_is_better = frozenset({"infidelity"})

    @dataclass
    class Params(Metric.Params):
        samples: int = 10
        sigma: float = 0.2
        output: str = "logit"

        def check(self) -> None:
            if self.samples < 1 or self.sigma <= 0 or self.output not in OUTPUTS:
                raise MetricError(
                    f"infidelity needs samples >= 1, sigma > 0 and output one of {', '.join(OUTPUTS)}, "
                    f"got {self.samples}, {self.sigma} and {self.output!r}"
                )

    def score(self, batch: MetricInput) -> dict[str, Tensor]:
        images = batch.images
        shape = (len(images), self.samples, *images.shape[1:])
        noise = torch.randn(shape, generator=self.generator(images.device), device=images.device, dtype=images.dtype)
        noise = self.sigma * noise
        clean = class_scores(batch.logits, batch.targets, self.output)
        value = infidelity(self.ctx.scorer, images, batch.maps, batch.targets, noise, clean, self.output)
        return {"infidelity": value}
