"""Grad-CAM++. Chattopadhay et al., "Grad-CAM++: Generalized Gradient-Based Visual Explanations
for Deep Convolutional Networks", WACV 2018, https://arxiv.org/abs/1710.11063 (eq. 19).

    alpha_k(i, j) = g^2 / (2 g^2 + sum_ab A_k(a, b) g^3 + eps),  0 where g = 0   (g = dy_c/dA_k(i, j))
    w_k = sum_ij alpha_k(i, j) ReLU(g),    L = ReLU(sum_k w_k A_k)

The closed form assumes y_c = exp(S_c); like the peers we use the logit's gradients in it, and
pytorch-grad-cam's eps = 1e-6. TorchCAM 0.5 differs twice: its alpha keeps g^2 (the division
acts on a boolean-indexed copy) and its denominator sums g^3 A instead of multiplying g^3 by
sum A; the tests show both.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cambench.methods.base import GradientMethod, register, weighted_sum

EPS = 1e-6


def gradcampp_weights(activations: Tensor, g1: Tensor, g2: Tensor, g3: Tensor) -> Tensor:
    """Grad-CAM++ channel weights (B, K) from activations and the gradient's first three powers."""
    alpha = g2 / (2 * g2 + activations.sum(dim=(2, 3), keepdim=True) * g3 + EPS)
    alpha = torch.where(g1 != 0, alpha, 0.0)
    return (alpha * torch.relu(g1)).sum(dim=(2, 3))


@register("gradcampp")
class GradCAMPlusPlus(GradientMethod):
    paper = "Chattopadhay et al., WACV 2018"
    summary = "Grad-CAM++: w_k = sum_ij alpha ReLU(g_k), alpha from g^2, g^3 (eq. 19)"
    checked = "pytorch-grad-cam (TorchCAM's alpha is wrong: see the tests)"

    def cam(self, activations: Tensor, gradients: Tensor) -> Tensor:
        weights = gradcampp_weights(activations, gradients, gradients**2, gradients**3)
        return weighted_sum(weights, activations)
