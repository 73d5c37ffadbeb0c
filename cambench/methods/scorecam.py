"""Score-CAM. Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional
Neural Networks", CVPR workshops 2020, https://arxiv.org/abs/1910.01279 (as the authors' code,
haofanwang/Score-CAM).

    M_k = minmax(U(A_k))   (U: bilinear upsampling to the input size; a flat A_k gets w_k = 0)
    w_k = softmax(f(x * M_k))_c,    L = ReLU(sum_k w_k A_k)

x is the model's (normalised) input. The peers deviate: pytorch-grad-cam weights by a softmax
over channels of the masked logits and upsamples with align_corners=True; TorchCAM normalises
A_k before upsampling and takes a softmax over channels of logit differences. The K masked
inputs of a batch go through the scorer in large chunks. Cost: (1 + K) forward passes.
"""

from __future__ import annotations

from torch import Tensor

from cambench.methods.base import CAMMethod, Forward, minmax, register, upsample, weighted_sum
from cambench.models.engine import Passes
from cambench.models.scorer import owners


@register("scorecam")
class ScoreCAM(CAMMethod):
    paper = "Wang et al., CVPRW 2020"
    cost = "(1 + K)F"
    score = "probability"

    def passes(self, channels: int, positions: int) -> Passes:
        return Passes(forward=1 + channels)

    def raw_map(self, fw: Forward) -> Tensor:
        a = fw.activations[-1]
        channels, size = a.shape[1], fw.images.shape[-2:]

        def masked(rows: slice) -> tuple[Tensor]:
            image, k = owners(rows, channels, a.device)
            masks = minmax(upsample(a[image, k], size))
            return (fw.images[image] * masks[:, None].to(fw.images.dtype),)

        weights = self.engine.scorer.score_rows(fw.targets, channels, masked, output=self.score)
        flat = a.flatten(2)
        weights = weights * (flat.amax(2) > flat.amin(2))  # a flat channel masks nothing: weight 0
        return weighted_sum(weights, a)
