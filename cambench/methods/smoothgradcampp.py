"""Smooth Grad-CAM++. Omeiza et al., "Smooth Grad-CAM++: An Enhanced Inference Level Visualization
Technique for Deep Convolutional Neural Network Models", IntelliSys 2019,
https://arxiv.org/abs/1908.01224.

Grad-CAM++ with activations and gradients averaged over N noisy copies x + n_i,
n_i ~ N(0, sigma^2) in the model's input space (seeded):

    A = mean_i A(x + n_i),   G_p = mean_i g_i^p  (p = 1, 2, 3)
    alpha = G_2 / (2 G_2 + sum_ab A(a, b) G_3 + eps),  0 where G_1 = 0
    w_k = sum_ij alpha ReLU(G_1),    L = ReLU(sum_k w_k A_k)

The N noisy copies of a batch are drawn at once (seeded) and go through the model in chunks of
the size the scorer found fastest for full passes on this device (the caller's batch size until
it has): on a GPU that is all copies in one pass, on a CPU a few images a pass, since a CPU's
forward costs more per image at large batches. Defaults as TorchCAM (N = 4, sigma = 0.3); with
sigma = 0 this is exactly Grad-CAM++. TorchCAM's SmoothGradCAMpp keeps the
clean activations in alpha but the last noisy sample's activations and gradients in the map.
Cost: (N + 1) forward passes (one clean, for the prediction, without autograd) and N backward
passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cambench.methods.base import Forward, MethodError, register, weighted_sum
from cambench.methods.gradcampp import GradCAMPlusPlus, gradcampp_weights
from cambench.models.engine import Passes


@register("smoothgradcampp")
class SmoothGradCAMPlusPlus(GradCAMPlusPlus):
    paper = "Omeiza et al., IntelliSys 2019"
    summary = "Smooth Grad-CAM++: Grad-CAM++ on A and g^p averaged over N noisy inputs"
    checked = "equals Grad-CAM++ (so pytorch-grad-cam) at sigma = 0; TorchCAM deviates"
    cost = "(N + 1)F + N B"

    @dataclass
    class Params(GradCAMPlusPlus.Params):
        samples: int = 4
        sigma: float = 0.3

        def check(self) -> None:
            if self.samples < 1 or self.sigma < 0:
                raise MethodError(
                    f"smoothgradcampp needs samples >= 1 and sigma >= 0, got {self.samples} and {self.sigma}"
                )

    def passes(self, channels: int, positions: int) -> Passes:
        return Passes(forward=self.samples + 1, backward=self.samples)

    def forward(
        self,
        images: Tensor,
        targets: Tensor | None = None,
        gradients: bool | None = False,
        ids: Sequence[str] | None = None,
    ) -> Forward:
        """The clean pass gives the prediction only: no graph, no backward (the map needs the noisy copies')."""
        return super().forward(images, targets, gradients, ids)

    def raw_map(self, fw: Forward) -> Tensor:
        images, n, b = fw.images, self.samples, len(fw.images)
        noise = torch.randn((n, *images.shape), generator=self.generator(images.device), device=images.device)
        noisy = (images[None] + self.sigma * noise).flatten(0, 1)  # row s * B + i: sample s of image i
        owner = torch.arange(n * b, device=images.device) % b
        # rows a pass: what the scorer found fastest for full passes on this device, else the caller's batch
        chunk = self.engine.scorer.settled_chunk(None, tuple(images.shape[1:])) or b
        sums = None  # per image: sum over samples of A, g, g^2, g^3
        for rows in torch.arange(n * b, device=images.device).split(chunk):
            part = super().forward(noisy[rows], fw.targets[owner[rows]], gradients=True)
            a, g = part.activations[-1], part.gradients[-1]
            stats = torch.stack([a, g, g**2, g**3])
            if sums is None:
                sums = stats.new_zeros((4, b, *stats.shape[2:]))
            sums.index_add_(1, owner[rows], stats)
        activations, g1, g2, g3 = sums / n
        return weighted_sum(gradcampp_weights(activations, g1, g2, g3), activations)
