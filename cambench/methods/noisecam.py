"""Noise-CAM, a model-independent sanity baseline: uniform noise at input resolution,

    L(i, j) ~ U(0, 1), seeded

Every metric should rank a real method above it. One forward pass (for the prediction only).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cambench.methods.base import CAMMethod, Forward, register


@register("noisecam")
class NoiseCAM(CAMMethod):
    paper = "baseline (uniform noise)"
    summary = "Noise-CAM: uniform noise, seeded"
    checked = "formula"

    def raw_map(self, fw: Forward) -> Tensor:
        b, _, h, w = fw.images.shape
        return torch.rand(b, h, w, generator=self.generator(fw.images.device), device=fw.images.device)
