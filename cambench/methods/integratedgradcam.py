"""Integrated Grad-CAM. Sattarzadeh, Sudhakar, Plataniotis, Jang, Jeong and Kim, "Integrated Grad-CAM:
Sensitivity-Aware Visual Explanation of Deep Convolutional Networks via Integrated Gradient-Based
Scoring", ICASSP 2021, https://arxiv.org/abs/2102.07805 (authors' code: smstrzd/IntegratedGradCAM).

The path integral of Grad-CAM's gradient-based term, the GAP gradients times the activations'
difference from the baseline's, along the straight path from a baseline b to x:

    x_m = b + (m / M)(x - b),   m = 1 .. M
    L = (1/M) sum_m ReLU( sum_k [mean_ij dy_c/dA_k(x_m)] (A_k(x_m) - A_k(b)) )

as the authors' architecture figure (``docs/IGCAM-arch.svg``: the points x, (M-1)/M, .., 1/M of
the path and the baseline through the CNN; per point the baseline's feature maps subtracted, GAP
gradients multiplied, a ReLU; the points' maps added). The paper's text was not available to
us; its abstract calls this "the path integral of the gradient-based terms in Grad-CAM". The
authors' notebook (``Integrated_Grad_CAM.ipynb``, ``integrated_gradcam``) deviates from the
figure: points i / M for i = 0 .. M - 1 (the baseline in, x out), and ``gradient_to_grad_cam_saliency``
called without its ``baseline`` argument, so A_k(b) is taken as 0. Its defaults: M = 50, a black
baseline (zeros in its [0, 255] input), the logit. Ours: M = 50, ``black`` (RGB 0 through the
preprocessing) or ``zeros`` (0 in the normalised space: the mean colour).

Where InteGrad-CAM (the seed's) differs: it averages the gradients first and multiplies them with
A(x) (no baseline subtraction, one ReLU at the end); here each point's own activations minus the
baseline's enter, and the ReLU is taken per point.

Cost: the clean pass (the point m = M, with its backward pass), M - 1 further points, and one
forward pass of the baseline per batch (declared per image, an upper bound): (M + 1) forward and
M backward passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cambench.methods.base import Forward, register, weighted_sum
from cambench.methods.integradcam import PathMethod
from cambench.models.engine import Passes


@register("integratedgradcam")
class IntegratedGradCAM(PathMethod):
    paper = "Sattarzadeh et al., ICASSP 2021"
    summary = (
        "Integrated Grad-CAM (authors' figure): L = (1/M) sum_m ReLU(sum_k mean_ij g_k(x_m) (A_k(x_m) - A_k(b))), "
        "x_m = b + (m/M)(x - b)"
    )
    checked = "formula on stubs with closed-form integrals; authors' notebook deviates"
    cost = "(M + 1)F + M B"

    @dataclass
    class Params(PathMethod.Params):
        steps: int = 50

    def passes(self, channels: int, positions: int) -> Passes:
        return Passes(forward=self.steps + 1, backward=self.steps)

    def raw_map(self, fw: Forward) -> Tensor:
        base = self.forward(self.start(fw.images), gradients=False).activations[-1]  # A(b): (1, K, h, w)
        return self.path_mean(fw, lambda a, g: torch.relu(weighted_sum(g.mean(dim=(2, 3)), a - base)))
