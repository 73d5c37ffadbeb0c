"""Ablation-CAM. Desai and Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional
Network via Gradient-free Localization", WACV 2020,
https://openaccess.thecvf.com/content_WACV_2020/html/Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.html

    w_k = (y_c - y_c^(k)) / |y_c|,    L = ReLU(sum_k w_k A_k)

y_c^(k) is the class logit with channel k of the target layer set to zero. Only the layers after
the target layer run, on all K ablated activations of a batch in large chunks: at ResNet's
``layer4`` that is pooling and one linear layer, so all K ablations cost about one forward pass.
The paper divides by y_c; we divide by |y_c| so that a negative class score does not invert the
map (pytorch-grad-cam inverts it, and it ablates to min(A) - 1e7 where min(A) != 0). Channels
that are all zero are not run (zeroing them changes nothing, so w_k = 0): the cost is one
forward pass and at most K tail passes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cambench.methods.base import CAMMethod, Forward, register, weighted_sum
from cambench.models.engine import Passes
from cambench.models.scorer import take_rows


@register("ablationcam")
class AblationCAM(CAMMethod):
    paper = "Desai and Ramaswamy, WACV 2020"
    summary = "Ablation-CAM: w_k = (y_c - y_c^(k)) / |y_c|; all-zero channels skipped"
    checked = "formula (pytorch-grad-cam deviates)"
    cost = "1F + K T"

    def passes(self, channels: int, positions: int) -> Passes:
        return Passes(forward=1, tail=channels)

    def raw_map(self, fw: Forward) -> Tensor:
        activation, *side = fw.carries[-1]
        pairs = (activation != 0).flatten(2).any(2).nonzero()  # zeroing an all-zero channel changes nothing: w_k = 0
        images, channels = pairs.cpu().unbind(1)

        def ablated(rows: slice) -> tuple[Tensor, ...]:
            a = take_rows(activation, images[rows]).clone()
            a[range(len(a)), pairs[rows, 1]] = 0
            return (a, *(take_rows(s, images[rows]) for s in side))

        layer = len(fw.carries) - 1
        scores = self.engine.scorer.score(fw.targets[pairs[:, 0]], ablated, layer=layer, output=self.score)
        clean = fw.logits.gather(1, fw.targets[:, None])[:, 0]
        weights = torch.zeros(activation.shape[:2], device=activation.device)
        weights[images, channels] = (clean[pairs[:, 0]] - scores) / clean[pairs[:, 0]].abs().clamp_min(1e-12)
        return weighted_sum(weights, fw.activations[-1])
