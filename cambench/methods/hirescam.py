"""HiRes-CAM. Draelos and Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
convolutional neural networks", arXiv 2020, https://arxiv.org/abs/2011.08891.

    L(i, j) = ReLU(sum_k dy_c/dA_k(i, j) A_k(i, j))   (element-wise, no spatial averaging)
"""

from __future__ import annotations

from torch import Tensor

from cambench.methods.base import GradientMethod, register


@register("hirescam")
class HiResCAM(GradientMethod):
    paper = "Draelos and Carin, arXiv 2020"
    summary = "HiRes-CAM: L = ReLU(sum_k g_k * A_k)"
    checked = "pytorch-grad-cam"

    def cam(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return (gradients * activations).sum(1)
