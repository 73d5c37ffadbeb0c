"""XGrad-CAM. Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of
CNNs", BMVC 2020, https://arxiv.org/abs/2008.02312.

    w_k = sum_ij (dy_c/dA_k(i, j) A_k(i, j)) / (sum_ij A_k(i, j) + eps),    L = ReLU(sum_k w_k A_k)

eps = 1e-7 as pytorch-grad-cam (TorchCAM uses 1e-8).
"""

from __future__ import annotations

from torch import Tensor

from cambench.methods.base import GradientMethod, register, weighted_sum

EPS = 1e-7


@register("xgradcam")
class XGradCAM(GradientMethod):
    paper = "Fu et al., BMVC 2020"
    summary = "XGrad-CAM: w_k = sum_ij g_k A_k / sum_ij A_k"
    checked = "pytorch-grad-cam, TorchCAM"

    def cam(self, activations: Tensor, gradients: Tensor) -> Tensor:
        weights = (gradients * activations).sum(dim=(2, 3)) / (activations.sum(dim=(2, 3)) + EPS)
        return weighted_sum(weights, activations)
