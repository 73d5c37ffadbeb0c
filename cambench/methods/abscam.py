"""Abs-CAM. Zeng, Yan, Wang, Yu, Xia and Zhao, "Abs-CAM: a gradient optimization interpretable
approach for explanation of convolutional neural networks", Signal, Image and Video Processing
17, 2023 (https://doi.org/10.1007/s11760-022-02313-0; arXiv 2022, https://arxiv.org/abs/2207.03648).

Two phases. The initial saliency maps weight each channel by its absolute gradients; the final
map weights them by the score of the image masked with each, as Score-CAM:

    w_k = mean_ij |dy_c/dA_k(i, j)|,   M0_k = w_k A_k                     (phase 1, y_c the logit)
    s_k = p_c(x * minmax(U(M0_k))),    L = ReLU(sum_k s_k M0_k)           (phase 2)

The authors released no code and the paper's body could not be consulted for this
implementation: the formula follows the abstract ("turns all [gradients] into positive
gradients", "the second phase linearly combines the initial saliency map with the original
image") with Grad-CAM's averaging and Score-CAM's masking, scoring and combination (softmax
probability of the target, as the Score-CAM authors' code; the unnormalised maps M0_k in the
sum). Per-channel initial maps are the reading in which the second phase changes anything: one
initial map sum_k w_k A_k, masked and scored, gives one scalar that the final min-max removes.
Since w_k >= 0, minmax(U(M0_k)) is Score-CAM's mask of A_k (w_k > 0) or flat (w_k = 0: skipped,
s_k = 0), so L = ReLU(sum_k s_k w_k A_k): Score-CAM's weights times mean |g_k|.
Cost: 1 forward and 1 backward pass, then at most K forward passes (in large chunks).
"""

from __future__ import annotations

from torch import Tensor

from cambench.methods.base import CAMMethod, Forward, register, weighted_sum
from cambench.methods.scorecam import mask_scores
from cambench.models.engine import Passes


@register("abscam")
class AbsCAM(CAMMethod):
    paper = "Zeng et al., SIViP 2023"
    summary = "Abs-CAM: M0_k = mean_ij |g_k| A_k, L = ReLU(sum_k p_c(x * minmax(up(M0_k))) M0_k)"
    checked = "formula (closed form on a linear stub); no released code"
    cost = "(1 + K)F + 1B"
    needs_gradients = True
    score = "probability"

    def passes(self, channels: int, positions: int) -> Passes:
        return Passes(forward=1 + channels, backward=1)

    def target_score(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Gradients of the logit, as Grad-CAM's; the masked inputs score probabilities."""
        return logits.gather(1, targets[:, None])[:, 0]

    def raw_map(self, fw: Forward) -> Tensor:
        initial = fw.gradients[-1].abs().mean((2, 3))[:, :, None, None] * fw.activations[-1]
        scores = mask_scores(self.engine.scorer, fw.images, fw.targets, initial, output=self.score)
        return weighted_sum(scores, initial)
