"""Grad-CAM. Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017, https://arxiv.org/abs/1610.02391.

    w_k = mean_ij dy_c/dA_k(i, j),    L = ReLU(sum_k w_k A_k)

Cost per image: one forward pass and one backward pass through the layers after the target layer.
"""

from __future__ import annotations

from torch import Tensor

from cambench.methods.base import GradientMethod, register, weighted_sum


@register("gradcam")
class GradCAM(GradientMethod):
    paper = "Selvaraju et al., ICCV 2017"
    summary = "Grad-CAM: w_k = mean_ij g_k, L = ReLU(sum_k w_k A_k)"
    checked = "pytorch-grad-cam, TorchCAM"

    def cam(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return weighted_sum(gradients.mean(dim=(2, 3)), activations)
