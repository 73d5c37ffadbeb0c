"""IS-CAM. Naidu, Ghosh, Maurya, Nayak K and Kundu, "IS-CAM: Integrated Score-CAM for
axiomatic-based explanations", arXiv 2020, https://arxiv.org/abs/2010.03023.

Score-CAM with each mask integrated over N scalings:

    M_k = minmax(U(A_k)),   w_k = (1/N) sum_{i=1..N} p_c(x * c_i M_k),   c_i = sum_{j=1..i} j / N
    L = ReLU(sum_k w_k A_k)

The scalings accumulate. The authors' code (r0cketr1kky/ISS-CAM_resources, algo.py, class
ISS_CAM2, N = 10 hard-coded) first scored x * M_k * i / N for i = 1..N and kept the max - min of
the probabilities; its last version accumulates ``new_map += x * M_k * i / N`` and scores only
the final sum (it does not run as released: ``new_map`` is never initialised). TorchCAM's ISCAM
scores every step of that accumulation, c_i = i (i + 1) / (2N) (up to (N + 1) / 2), and averages:
we do the same, with its default N = 10 (its docstring writes the sum from j = 0 to i - 1, one
step lower than its code). The masks are normalised after upsampling and scored by the softmax
probability of the target, as the authors' code and our Score-CAM; flat channels are skipped
(w_k = 0), as the authors' code does.

TorchCAM deviates as its Score-CAM does: A_k normalised before upsampling, a softmax over
channels of the mean logit differences (1/N) sum_i (y_c(x * c_i M_k) - y_c(x)), flat channels
scored. Cost: 1 forward pass, then at most K N (all N scalings of a batch's masks in large chunks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cambench.methods.base import Forward, MethodError, register
from cambench.methods.scorecam import Perturb, ScoreCAM


@register("iscam")
class ISCAM(ScoreCAM):
    paper = "Naidu et al., arXiv 2020"
    summary = "IS-CAM: w_k = mean_i p_c(x * c_i minmax(up(A_k))), c_i = sum_{j<=i} j / N (TorchCAM's scalings)"
    checked = "TorchCAM ISCAM (it deviates as its Score-CAM); formula on a linear stub"
    cost = "(1 + K N)F"

    @dataclass
    class Params(ScoreCAM.Params):
        samples: int = 10

        def check(self) -> None:
            if self.samples < 1:
                raise MethodError(f"iscam needs samples >= 1, got {self.samples}")

    def perturb(self, fw: Forward) -> Perturb:
        scales = torch.arange(1, self.samples + 1, device=fw.images.device).cumsum(0) / self.samples

        def scaled(masks: Tensor, pairs: Tensor, samples: Tensor) -> Tensor:
            return masks * scales[samples, None, None]

        return scaled
