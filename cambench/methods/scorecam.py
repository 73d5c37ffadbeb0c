"""Score-CAM. Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional
Neural Networks", CVPR workshops 2020, https://arxiv.org/abs/1910.01279 (as the authors' code,
haofanwang/Score-CAM).

    M_k = minmax(U(A_k))   (U: bilinear upsampling to the input size; a flat A_k gets w_k = 0, unscored)
    w_k = softmax(f(x * M_k))_c,    L = ReLU(sum_k w_k A_k)

x is the model's (normalised) input. The peers deviate: pytorch-grad-cam weights by a softmax
over channels of the masked logits and upsamples with align_corners=True; TorchCAM normalises
A_k before upsampling and takes a softmax over channels of logit differences. The K masked
inputs of a batch go through the scorer in large chunks; flat channels are skipped, as the
authors' code does, so the cost is at most (1 + K) forward passes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cambench.methods.base import CAMMethod, Forward, minmax, register, upsample, weighted_sum
from cambench.models.engine import Passes
from cambench.models.scorer import take_rows


@register("scorecam")
class ScoreCAM(CAMMethod):
    paper = "Wang et al., CVPRW 2020"
    cost = "(1 + K)F"
    score = "probability"

    def passes(self, channels: int, positions: int) -> Passes:
        return Passes(forward=1 + channels)

    def raw_map(self, fw: Forward) -> Tensor:
        a = fw.activations[-1]
        flat = a.flatten(2)
        pairs = (flat.amax(2) > flat.amin(2)).nonzero()  # (image, channel), image-major; flat channels: w_k = 0
        images, channels = pairs.cpu().unbind(1)
        size = fw.images.shape[-2:]

        def masked(rows: slice) -> tuple[Tensor]:
            masks = minmax(upsample(a[pairs[rows, 0], pairs[rows, 1]], size))
            return (take_rows(fw.images, images[rows]) * masks[:, None].to(fw.images.dtype),)

        weights = torch.zeros(a.shape[:2], device=a.device)
        weights[images, channels] = self.engine.scorer.score(fw.targets[pairs[:, 0]], masked, output=self.score)
        return weighted_sum(weights, a)
