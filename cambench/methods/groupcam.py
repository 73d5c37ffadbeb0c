"""Group-CAM. Zhang, Rao and Yang, "Group-CAM: Group Score-Weighted Visual Explanations for Deep
Convolutional Networks", arXiv 2021, https://arxiv.org/abs/2103.13859, as the authors' code
(wofmanaf/Group-CAM, cam/groupcam.py at ffd807b; line numbers below refer to it):

    alpha_k = mean_ij dy_c/dA_k(i, j)                       (Grad-CAM weights of the logit, l. 26-36)
    S_g = ReLU(sum_{k in group g} alpha_k A_k)               (G contiguous channel groups, l. 38-48)
    M_g = minmax(U(S_g))                                     (bilinear to the input size, l. 49-55)
    s_g = ReLU(p_c(x * M_g + b(x) (1 - M_g)) - p_c(b(x)))    (softmax probabilities, l. 57-63)
    L = sum_g s_g S_g                                        (l. 64)

b is kornia's ``gaussian_blur2d`` with kernel 51 and sigma 50 (reflect padding; l. 7), here
:func:`cambench.data.blur.sampled_gaussian_blur`; x is the normalised input. The authors sum the
*upsampled* S_g (not the masks) at input resolution; upsampling is linear, so returning the
low-resolution sum and letting the base upsample and min-max it gives the same map.

Where the code leaves a case open: ``torch.chunk`` makes groups of ceil(K / G) channels, fewer
than G for many K (K = 100: 25), and the reshape to G groups then fails; we make min(G, K)
contiguous groups of K // G or K // G + 1 channels (the authors' groups where G divides K: 32
groups of 16 or 64 at ResNet's 512 or 2048 channels). A flat S_g makes the authors' min-max
divide by zero (NaN); we give it s_g = 0, the value its limit mask 0 gives (the input is then
b(x) itself), and do not score it. The baseline p_c(b(x)) is taken per image (the code takes the
first image's, ``[0]``: it explains one image at a time). Cost: 1 forward and 1 backward pass
(the gradients), 1 forward pass for b(x) and one per group: (G + 2)F + 1B per image (min(G, K)
groups; flat ones unscored).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cambench.data.blur import sampled_gaussian_blur
from cambench.methods.base import CAMMethod, Forward, MethodError, register, weighted_sum
from cambench.methods.scorecam import mask_scores
from cambench.models.engine import Passes

BLUR_KERNEL, BLUR_SIGMA = 51, 50.0  # the authors' substrate (kornia gaussian_blur2d)


@register("groupcam")
class GroupCAM(CAMMethod):
    paper = "Zhang et al., arXiv 2021"
    summary = (
        "Group-CAM (authors' code): L = sum_g s_g S_g, S_g = ReLU(sum_{k in g} alpha_k A_k), "
        "s_g = ReLU(p_c(x M_g + blur(x)(1 - M_g)) - p_c(blur(x)))"
    )
    checked = "authors' code (on a stub, kornia blur)"
    cost = "(G + 2)F + 1B"
    needs_gradients = True
    score = "probability"

    @dataclass
    class Params(CAMMethod.Params):
        groups: int = 32

        def check(self) -> None:
            if self.groups < 1:
                raise MethodError(f"groupcam needs groups >= 1, got {self.groups}")

    def passes(self, channels: int, positions: int) -> Passes:
        return Passes(forward=2 + min(self.groups, channels), backward=1)

    def target_score(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Gradients of the logit (the authors' ``score = logit[:, c]``); the groups score probabilities."""
        return logits.gather(1, targets[:, None])[:, 0]

    def raw_map(self, fw: Forward) -> Tensor:
        a, g = fw.activations[-1], fw.gradients[-1]
        channels = a.shape[1]
        groups = min(self.groups, channels)
        group = torch.arange(channels, device=a.device) * groups // channels  # contiguous, near-equal groups
        weighted = g.mean((2, 3))[:, :, None, None] * a
        sums = torch.relu(a.new_zeros(len(a), groups, *a.shape[2:]).index_add_(1, group, weighted))
        blurred = sampled_gaussian_blur(fw.images, BLUR_KERNEL, BLUR_SIGMA)
        scorer = self.engine.scorer
        baseline = scorer(blurred, fw.targets, output=self.score)
        scores = mask_scores(scorer, fw.images, fw.targets, sums, substrate=blurred, output=self.score)
        return weighted_sum(torch.relu(scores - baseline[:, None]), sums)
