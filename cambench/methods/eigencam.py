"""Eigen-CAM. Muhammad and Yeasin, "Eigen-CAM: Class Activation Map using Principal Components",
IJCNN 2020, https://arxiv.org/abs/2008.00299.

The activations of one image as an (hw x K) matrix, centred over positions, projected on its
first right singular vector:

    M = A - mean_ij A,   M = U S V^T,   L = ReLU(M v_1)  (= ReLU(s_1 u_1))

The SVD's sign is arbitrary (pytorch-grad-cam keeps whatever LAPACK returns). Ours is fixed
deterministically: L correlates positively with the channel-mean map sum_k A_k. Gradient-free
and class-agnostic; one forward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cambench.methods.base import CAMMethod, Forward, register


def first_component(activations: Tensor) -> Tensor:
    """Projection (B, h, w) of the centred activations on their first principal direction, sign-fixed.

    M v_1 is computed from the smaller Gram matrix: with hw <= K it is sigma_1 u_1, u_1 the top
    eigenvector of M M^T (hw x hw), else M times the top eigenvector of M^T M (K x K); in float64.
    """
    b, _, h, w = activations.shape
    m = activations.flatten(2).transpose(1, 2).double()  # (B, hw, K)
    m = m - m.mean(1, keepdim=True)
    if m.shape[1] <= m.shape[2]:
        values, vectors = torch.linalg.eigh(m @ m.transpose(1, 2))
        projection = vectors[..., -1] * values[:, -1:].clamp_min(0).sqrt()
    else:
        _, vectors = torch.linalg.eigh(m.transpose(1, 2) @ m)
        projection = (m @ vectors[..., -1:])[..., 0]
    mean_map = activations.mean(1).flatten(1).double()
    mean_map = mean_map - mean_map.mean(1, keepdim=True)
    sign = torch.where((projection * mean_map).sum(1) < 0, -1.0, 1.0)
    return (projection * sign[:, None]).float().view(b, h, w)


@register("eigencam")
class EigenCAM(CAMMethod):
    paper = "Muhammad and Yeasin, IJCNN 2020"
    summary = "Eigen-CAM: first principal component of A, sign fixed"
    checked = "pytorch-grad-cam (up to its sign)"

    def raw_map(self, fw: Forward) -> Tensor:
        return first_component(fw.activations[-1])
