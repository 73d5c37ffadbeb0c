"""Max- and average-sensitivity. Yeh, Hsieh, Suggala, Inouye and Ravikumar, "On the (In)fidelity and
Sensitivity of Explanations", NeurIPS 2019, https://arxiv.org/abs/1901.09392, as Captum's
``captum.metrics.sensitivity_max`` computes it (its default perturbation and norm):

    s_n = || L(x + d_n) - L(x) ||_F / || L(x) ||_F,     n = 1 .. N
    max_sensitivity = max_n s_n,    avg_sensitivity = (1 / N) sum_n s_n      (both lower is better)

with N = ``samples`` seeded perturbations d_n uniform in the L-infinity ball of radius ``radius``
(every channel of every pixel, in the model's normalised input space; Captum's default
perturb_radius 0.02) and L the method's map (B, H, W) in [0, 1] for the same class on x and on
x + d_n. The division by ||L(x)||_F is Captum's (since its first release, 0.3) and Quantus's
(``MaxSensitivity``: norm_denominator = Frobenius norm of the explanation); Captum divides by 1
where ||L(x)|| = 0 (an all-zero map), and so does this. ``normalise=False`` drops the division:
the paper's SENS_MAX = max ||L(x + d) - L(x)||, sampled (the sensitivity of a 224 x 224 map is
then on the scale of its Frobenius norm, up to 224). Quantus's defaults differ otherwise: 200
samples, noise uniform in [-0.2, 0.2], and its abs / normalise-by-max on both maps.

Cost: ``samples`` maps per image (the method's own cost each, e.g. 1F + 1B for Grad-CAM): the B N
perturbed inputs of a batch go through the method in N calls of B images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cambench.methods.base import CAMMethod
from cambench.metrics.base import Metric, MetricError, MetricInput, register


def uniform_noise(images: Tensor, samples: int, radius: float, generator: torch.Generator) -> Tensor:
    """Perturbations (B, samples, C, H, W) uniform in [-radius, radius] (the L-infinity ball)."""
    shape = (len(images), samples, *images.shape[1:])
    noise = torch.rand(shape, generator=generator, device=images.device, dtype=images.dtype)
    return (2 * noise - 1) * radius


def sensitivities(
    method: CAMMethod,
    images: Tensor,
    maps: Tensor,
    targets: Tensor,
    noise: Tensor,
    normalise: bool,
    ids: Sequence[str] | None = None,
) -> Tensor:
    """s (B, N): ||L(x + d_n) - L(x)||_F (divided by ||L(x)||_F, or by 1 where it is 0, when
    ``normalise``) for the perturbations ``noise`` (B, N, C, H, W); ``maps`` (B, H, W) = L(x).
    Row b N + n is image b with perturbation n (Captum's order); the method sees B rows a call."""
    batch, samples = noise.shape[:2]
    rows = noise.flatten(0, 1)
    owner = torch.arange(batch * samples, device=images.device) // samples
    distances = []
    for start in range(0, batch * samples, batch):
        index = owner[start : start + batch]
        named = None if ids is None else [ids[i] for i in index.tolist()]  # each row named by its image
        again = method.explain(images[index] + rows[start : start + batch], targets[index], named)
        distances.append((again.maps.double() - maps[index].double()).flatten(1).norm(dim=1))
    s = torch.cat(distances).view(batch, samples)
    if normalise:
        norms = maps.flatten(1).double().norm(dim=1)
        s = s / torch.where(norms > 0, norms, 1.0)[:, None]
    return s


@register("sensitivity")
class Sensitivity(Metric):
    """Max- and average-sensitivity of the maps to uniform input noise; see the module docstring."""

    names = ("max_sensitivity", "avg_sensitivity")
    lower_is_better = frozenset(names)
    requires = frozenset({"model", "new_maps"})  # the maps of the perturbed inputs

    @dataclass
    class Params(Metric.Params):
        samples: int = 10
        radius: float = 0.02
        normalise: bool = True

        def check(self) -> None:
            if self.samples < 1 or not self.radius > 0:
                raise MetricError(
                    f"sensitivity needs samples >= 1 and radius > 0, got {self.samples} and {self.radius}"
                )

    def score(self, batch: MetricInput) -> dict[str, Tensor]:
        noise = uniform_noise(batch.images, self.samples, self.radius, self.generator(batch.images.device))
        s = sensitivities(self.ctx.method, batch.images, batch.maps, batch.targets, noise, self.normalise, batch.ids)
        return {"max_sensitivity": s.amax(1).float(), "avg_sensitivity": s.mean(1).float()}
