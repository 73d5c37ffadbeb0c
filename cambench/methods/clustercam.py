"""Cluster-CAM. Feng, Ji, Dakovic, Cui, Zhu and Stankovic, "Cluster-CAM: Cluster-Weighted Visual
Interpretation of CNNs' Decision in Image Classification", arXiv 2023 (Neural Networks 178, 2024),
https://arxiv.org/abs/2302.01642. No code released.

The abstract: gradient-free; the feature maps are split into clusters without supervision, a few
forward passes score the clusters, and a "cognition-base map" and "cognition-scissors" forged from
the clustered maps are merged into the heatmap. The paper's body (its exact formula and default
cluster count) could not be read when this was written: the formula below is the seed project's
reading of the paper (tetutaro/class_activation_mapping, ``cam/base/channel_weight.py``,
``weight_channel`` with ``channel_minmax``), made gradient-free as the abstract says and with
k-means clusters:

    clusters: k-means of the maps U(A_k) (U: bilinear upsampling to the input), G clusters by the
        elbow rule of Cosine-CAM (the seed's default) or ``clusters``
    M_g = mean_{k in g} A_k,   w = the seed's abscission weights of the M_g (as Cosine-CAM:
        L2-normalised logit gains of x m_g + blur(x)(1 - m_g) over blur(x))
    base = argmax_g w_g,   scissors = argmin_g w_g
    L = U(w_base M_base - (1 - w_base) M_scissors), minus its median (then ReLU and min-max)

The seed's Cluster-CAM differs: its channel maps are Grad-CAM's mean(g_k) A_k (gradients, which
the paper avoids) and it clusters them by spectral clustering (nearest-neighbour affinity); its
other differences are Cosine-CAM's (see :mod:`cambench.methods.cosinecam`). Cost: 1 forward pass,
then G + 1 forward passes, G <= ceil(sqrt(K)) + 1 with the elbow rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cambench.methods.base import CAMMethod, Forward, register, weighted_sum
from cambench.methods.cosinecam import (
    GroupingParams,
    gain_weights,
    group_channels,
    group_counts,
    group_means,
    median_centred,
)
from cambench.models.engine import Passes


@register("clustercam")
class ClusterCAM(CAMMethod):
    paper = "Feng et al., arXiv 2023"
    summary = (
        "Cluster-CAM (seed project's reading, gradient-free): k-means clusters of A_k, "
        "L = w_base M_base - (1 - w_base) M_scissors (best and worst cluster by logit gain over blur)"
    )
    checked = "formula (paper body unverified: the seed's reading)"
    cost = "(2 + G)F, G <= ceil(sqrt(K)) + 1"

    @dataclass
    class Params(GroupingParams):
        clusters: int = 0  # 0: the elbow rule

        def check(self) -> None:
            self.check_grouping(self.clusters, 2)

    def passes(self, channels: int, positions: int) -> Passes:
        return Passes(forward=2 + max(group_counts(channels, self.clusters)))

    def raw_map(self, fw: Forward) -> Tensor:
        maps = fw.activations[-1]
        size = tuple(fw.images.shape[-2:])
        labels, counts = group_channels(self, maps, size, self.clusters, False, self.iterations, self.tolerance)
        cluster_maps = group_means(maps, labels, int(counts.max()))
        weights = gain_weights(self, fw, cluster_maps, self.kernel_size, self.sigma)
        real = torch.arange(weights.shape[1], device=weights.device) < counts[:, None]  # not padding
        base = weights.masked_fill(~real, -torch.inf).argmax(1, keepdim=True)
        scissors = weights.masked_fill(~real, torch.inf).argmin(1, keepdim=True)
        top = weights.gather(1, base)
        merge = torch.zeros_like(weights).scatter(1, base, top).scatter(1, scissors, top - 1)  # as the seed's order
        return median_centred(weighted_sum(merge, cluster_maps), size)
