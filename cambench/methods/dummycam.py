"""Dummy-CAM, a sanity baseline (the seed project's): the mean of the target layer's channels,

    L = ReLU(mean_k A_k)

Class-agnostic and gradient-free; it shows what the activations alone give. One forward pass.
"""

from __future__ import annotations

from torch import Tensor

from cambench.methods.base import CAMMethod, Forward, register


@register("dummycam")
class DummyCAM(CAMMethod):
    paper = "baseline (channel mean)"
    summary = "Dummy-CAM: mean of the channels"
    checked = "formula"

    def raw_map(self, fw: Forward) -> Tensor:
        return fw.activations[-1].mean(1)
