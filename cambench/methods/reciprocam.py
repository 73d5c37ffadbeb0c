"""Recipro-CAM. Byun and Lee, "Recipro-CAM: Fast gradient-free visual explanations for
convolutional neural networks", arXiv 2022, https://arxiv.org/abs/2209.14074 (as the authors'
code, sybyun/ReciproCAM).

For every feature position (i, j) the tail runs on the activations with only that position kept
(``kernel=onehot``, the authors' default), or with the feature vector at (i, j) spread over its
3 x 3 neighbourhood by the weights [[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16 (``kernel=gaussian``):

    L(i, j) = softmax(tail(A * E_ij))_c

All hw masked activations of a batch go through the tail in large chunks. The authors' code
reuses the first image's class for every image of a batch; we explain each image's own target.
Cost: one forward pass and hw tail passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cambench.methods.base import CAMMethod, Forward, MethodError, register
from cambench.models.engine import Passes
from cambench.models.scorer import expand_rows, owners

KERNELS = ("onehot", "gaussian")


def position_masks(h: int, w: int, kernel: str, device: torch.device) -> Tensor:
    """(hw, h, w): the one-hot mask of each position, or the 3 x 3 Gaussian centred on it (cut at the border)."""
    masks = torch.eye(h * w, device=device).view(h * w, 1, h, w)
    if kernel == "gaussian":
        g = torch.tensor([1.0, 2.0, 1.0], device=device)
        masks = F.conv2d(masks, (g[:, None] * g[None, :] / 16).view(1, 1, 3, 3), padding=1)
    return masks[:, 0]


@register("reciprocam")
class ReciproCAM(CAMMethod):
    paper = "Byun and Lee, arXiv 2022"
    summary = "Recipro-CAM (authors' code): L(i, j) = p_c(tail(A kept at (i, j)))"
    checked = "formula"
    cost = "1F + hw T"
    score = "probability"

    @dataclass
    class Params(CAMMethod.Params):
        kernel: str = "onehot"

        def check(self) -> None:
            if self.kernel not in KERNELS:
                raise MethodError(f"unknown reciprocam kernel {self.kernel!r}; valid: {', '.join(KERNELS)}")

    def passes(self, channels: int, positions: int) -> Passes:
        return Passes(forward=1, tail=positions)

    def raw_map(self, fw: Forward) -> Tensor:
        activation, *side = fw.carries[-1]
        h, w = activation.shape[-2:]
        masks = position_masks(h, w, self.kernel, activation.device).to(activation.dtype)

        def masked(rows: slice) -> tuple[Tensor, ...]:
            _, position = owners(rows, h * w, activation.device)
            a = expand_rows(activation, rows, h * w)
            if self.kernel == "gaussian":  # the feature vector at (i, j), spread over its neighbourhood
                a = a.flatten(2).gather(2, position.view(-1, 1, 1).expand(-1, a.shape[1], 1))[..., None]
            return (a * masks[position][:, None], *(expand_rows(s, rows, h * w) for s in side))

        layer = len(fw.carries) - 1
        scores = self.engine.scorer.score_rows(fw.targets, h * w, masked, layer=layer, output=self.score)
        return scores.view(-1, h, w)
