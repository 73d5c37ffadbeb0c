"""Smooth Grad-CAM++. Omeiza et al., "Smooth Grad-CAM++: An Enhanced Inference Level Visualization
Technique for Deep Convolutional Neural Network Models", IntelliSys 2019,
https://arxiv.org/abs/1908.01224.

Grad-CAM++ with activations and gradients averaged over N noisy copies x + n_i,
n_i ~ N(0, sigma^2) in the model's input space (seeded):

    A = mean_i A(x + n_i),   G_p = mean_i g_i^p  (p = 1, 2, 3)
    alpha = G_2 / (2 G_2 + sum_ab A(a, b) G_3 + eps),  0 where G_1 = 0
    w_k = sum_ij alpha ReLU(G_1),    L = ReLU(sum_k w_k A_k)

All N copies of a batch go through the model in one pass. Defaults as TorchCAM (N = 4,
sigma = 0.3); with sigma = 0 this is exactly Grad-CAM++. TorchCAM's SmoothGradCAMpp keeps the
clean activations in alpha but the last noisy sample's activations and gradients in the map.
Cost: (N + 1) forward passes (one clean, for the prediction, without autograd) and N backward
passes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cambench.methods.base import Forward, MethodError, register, weighted_sum
from cambench.methods.gradcampp import GradCAMPlusPlus, gradcampp_weights
from cambench.models.engine import Passes


@register("smoothgradcampp")
class SmoothGradCAMPlusPlus(GradCAMPlusPlus):
    paper = "Omeiza et al., IntelliSys 2019"
    cost = "(N + 1)F + N B"

    def __init__(self, engine, samples: int = 4, sigma: float = 0.3):
        super().__init__(engine)
        self.samples, self.sigma = samples, sigma

    @classmethod
    def check(cls, samples: int = 4, sigma: float = 0.3) -> None:
        if samples < 1 or sigma < 0:
            raise MethodError(f"smoothgradcampp needs samples >= 1 and sigma >= 0, got {samples} and {sigma}")

    def passes(self, channels: int, positions: int) -> Passes:
        return Passes(forward=self.samples + 1, backward=self.samples)

    def forward(self, images: Tensor, targets: Tensor | None = None, gradients: bool | None = False) -> Forward:
        """The clean pass gives the prediction only: no graph, no backward (the map needs the noisy copies')."""
        return super().forward(images, targets, gradients)

    def raw_map(self, fw: Forward) -> Tensor:
        images, n = fw.images, self.samples
        noise = torch.randn((n, *images.shape), generator=self.generator(images.device), device=images.device)
        noisy = (images[None] + self.sigma * noise).flatten(0, 1)  # sample-major: row s * B + b
        smooth = super().forward(noisy, fw.targets.repeat(n), gradients=True)
        activations = smooth.activations[-1].unflatten(0, (n, -1)).mean(0)
        g = smooth.gradients[-1].unflatten(0, (n, -1))
        weights = gradcampp_weights(activations, g.mean(0), (g**2).mean(0), (g**3).mean(0))
        return weighted_sum(weights, activations)
