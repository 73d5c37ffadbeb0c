"""Random-CAM, a sanity baseline: random channel weights,

    w_k ~ U(-1, 1) (seeded, per image),   L = ReLU(sum_k w_k A_k)

as pytorch-grad-cam's RandomCAM. Model-dependent through A but not class-dependent. One forward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cambench.methods.base import CAMMethod, Forward, register, weighted_sum


@register("randomcam")
class RandomCAM(CAMMethod):
    paper = "baseline (random weights)"
    summary = "Random-CAM: random channel weights U(-1, 1), seeded"
    checked = "formula"

    def raw_map(self, fw: Forward) -> Tensor:
        a = fw.activations[-1]
        weights = torch.rand(a.shape[:2], generator=self.generator(a.device), device=a.device) * 2 - 1
        return weighted_sum(weights, a)
