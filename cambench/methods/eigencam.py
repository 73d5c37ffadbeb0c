"""Eigen-CAM. Muhammad and Yeasin, "Eigen-CAM: Class Activation Map using Principal Components",
IJCNN 2020, https://arxiv.org/abs/2008.00299.

The activations of one image as an (hw x K) matrix, centred over positions, projected on its
first right singular vector:

    M = A - mean_ij A,   M = U S V^T,   L = ReLU(M v_1)

The SVD's sign is arbitrary (pytorch-grad-cam keeps whatever LAPACK returns). Ours is fixed
deterministically: L correlates positively with the channel-mean map sum_k A_k. Gradient-free
and class-agnostic; one forward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cambench.methods.base import CAMMethod, Forward, register


def first_component(activations: Tensor) -> Tensor:
    """Projection (B, h, w) of the centred activations on their first principal direction, sign-fixed."""
    b, _, h, w = activations.shape
    m = activations.flatten(2).transpose(1, 2)  # (B, hw, K)
    m = m - m.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(m, full_matrices=False)
    projection = m @ vh[:, 0, :, None]  # (B, hw, 1)
    mean_map = activations.mean(1).flatten(1)
    mean_map = mean_map - mean_map.mean(1, keepdim=True)
    sign = torch.where((projection[..., 0] * mean_map).sum(1) < 0, -1.0, 1.0)
    return (projection[..., 0] * sign[:, None]).view(b, h, w)


@register("eigencam")
class EigenCAM(CAMMethod):
    paper = "Muhammad and Yeasin, IJCNN 2020"

    def raw_map(self, fw: Forward) -> Tensor:
        return first_component(fw.activations[-1])
