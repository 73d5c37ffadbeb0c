"""Fake-CAM, a sanity baseline. Poppi et al., "Revisiting The Evaluation of Class Activation
Mapping for Explainability: A Novel Metric and Experimental Analysis", CVPR workshops 2021,
https://arxiv.org/abs/2104.10252.

    L = 1 everywhere at input resolution, except L(0, 0) = 0

x * L is practically x, so Average Drop is about 0 although the map explains nothing; ADCC
exposes it through complexity. The map is made at input resolution and never resampled (the
seed project set the zero at feature resolution, and upsampling ramped a whole corner).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cambench.methods.base import CAMMethod, Forward, register


@register("fakecam")
class FakeCAM(CAMMethod):
    paper = "Poppi et al., CVPRW 2021"
    summary = "Fake-CAM: ones, pixel (0, 0) = 0, at input resolution"
    checked = "formula"

    def raw_map(self, fw: Forward) -> Tensor:
        b, _, h, w = fw.images.shape
        maps = torch.ones(b, h, w, device=fw.images.device)
        maps[:, 0, 0] = 0
        return maps
