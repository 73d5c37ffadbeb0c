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

:func:`mask_scores` scores maps as masks for every method of the family: SS-CAM and IS-CAM
(N noisy or scaled copies of each mask, :meth:`ScoreCAM.perturb`), Abs-CAM (masks from
gradient-weighted channels) and Group-CAM (group masks over a blurred substrate).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from cambench.methods.base import CAMMethod, Forward, minmax, register, upsample, weighted_sum
from cambench.models.engine import Passes
from cambench.models.scorer import Scorer, take_rows

# (masks (R, H, W), their (image, map) pairs (R, 2), their sample indices (R,)) -> perturbed masks (R, H, W)
Perturb = Callable[[Tensor, Tensor, Tensor], Tensor]


def mask_scores(
    scorer: Scorer,
    images: Tensor,
    targets: Tensor,
    maps: Tensor,
    samples: int = 1,
    perturb: Perturb | None = None,
    substrate: Tensor | None = None,
    output: str = "probability",
) -> Tensor:
    """(B, M) scores of the M maps (B, M, h, w) of each image used as masks:

        s_bj = mean_n y_c(x_b * m + substrate_b * (1 - m)),   m = perturb(minmax(U(maps[b, j])), n)

    over ``samples`` copies n (substrate: zeros unless given; y_c the ``output`` of class
    ``targets[b]``). A flat map gets 0 and is not scored. The rows (map-major, then sample) are
    built chunk by chunk, so no more than one chunk of masked inputs exists at a time.
    """
    flat = maps.flatten(2)
    pairs = (flat.amax(2) > flat.amin(2)).nonzero()  # (image, map), image-major
    owners = pairs[:, 0].cpu().repeat_interleave(samples)  # the image of every row, ascending
    size = images.shape[-2:]

    def masked(rows: slice) -> tuple[Tensor]:
        index = torch.arange(rows.start, rows.stop, device=maps.device)
        pair, sample = pairs[index // samples], index % samples
        masks = minmax(upsample(maps[pair[:, 0], pair[:, 1]], size))
        if perturb is not None:
            masks = perturb(masks, pair, sample)
        masks = masks[:, None].to(images.dtype)
        inputs = take_rows(images, owners[rows]) * masks
        if substrate is not None:
            inputs = inputs + take_rows(substrate, owners[rows]) * (1 - masks)
        return (inputs,)

    scores = scorer.score(targets[pairs[:, 0]].repeat_interleave(samples), masked, output=output)
    weights = torch.zeros(maps.shape[:2], device=maps.device)
    weights[pairs[:, 0], pairs[:, 1]] = scores.view(-1, samples).mean(1)
    return weights


@register("scorecam")
class ScoreCAM(CAMMethod):
    paper = "Wang et al., CVPRW 2020"
    summary = "Score-CAM (authors' code): w_k = p_c(x * minmax(up(A_k))); flat channels skipped"
    checked = "formula (both peers deviate)"
    cost = "(1 + K)F"
    score = "probability"
    samples = 1  # copies of each mask scored (N of SS-CAM and IS-CAM)

    def passes(self, channels: int, positions: int) -> Passes:
        return Passes(forward=1 + channels * self.samples)

    def perturb(self, fw: Forward) -> Perturb | None:
        """The transform of each copy of a mask for the batch ``fw`` (None: the mask itself)."""
        return None

    def raw_map(self, fw: Forward) -> Tensor:
        a = fw.activations[-1]
        weights = mask_scores(
            self.engine.scorer, fw.images, fw.targets, a, self.samples, self.perturb(fw), output=self.score
        )
        return weighted_sum(weights, a)
