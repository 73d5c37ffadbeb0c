"""Center-CAM, a model-independent sanity baseline: a Gaussian centred on the image,

    L(y, x) = exp(-((x - x_0)^2 + (y - y_0)^2) / (2 (sigma * min(H, W))^2))

at input resolution (sigma relative to the shorter side, 0.25 by default). Objects are often
centred, so it is a baseline that localisation metrics must beat. One forward pass (for the
prediction only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cambench.methods.base import CAMMethod, Forward, MethodError, register


@register("centercam")
class CenterCAM(CAMMethod):
    paper = "baseline (centred Gaussian)"
    summary = "Center-CAM: centred Gaussian (sigma relative to the image side)"
    checked = "formula"

    @dataclass
    class Params(CAMMethod.Params):
        sigma: float = 0.25

        def check(self) -> None:
            if self.sigma <= 0:
                raise MethodError(f"centercam needs sigma > 0, got {self.sigma}")

    def raw_map(self, fw: Forward) -> Tensor:
        b, _, h, w = fw.images.shape
        y = torch.arange(h, device=fw.images.device) - (h - 1) / 2
        x = torch.arange(w, device=fw.images.device) - (w - 1) / 2
        scale = 2 * (self.sigma * min(h, w)) ** 2
        return torch.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / scale).expand(b, h, w)
