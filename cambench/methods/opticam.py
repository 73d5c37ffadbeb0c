"""Opti-CAM. Zhang, Torres, Sicre, Avrithis and Ayache, "Opti-CAM: Optimizing saliency maps for
interpretability", CVIU 2024 (arXiv 2023), https://arxiv.org/abs/2301.07002 (as the authors' code,
hanwei0912/OptiCAM, ``util.py``: ``Basic_OptCAM``).

Per image, channel weights u in R^K are optimised so that the masked image scores highest:

    S(u) = sum_k softmax(u)_k ReLU(A_k),    M(u) = minmax(up(S(u)))   (bilinear, input size)
    u* = argmax_u y_c(x * M(u)),            L = S(u*)

The authors' defaults: Adam, lr 0.01, 100 iterations (``Basic_OptCAM``'s defaults; the demo
script ``generate_opticam.py`` passes 50 and 0.1), u = 0.5 for every channel (uniform weights),
the ReLU of the activations, min-max normalisation over the upsampled map, and the loss
``plain``: sum_i y_c(x_i) - y_c(x_i * M_i) on logits (the demo's default; ``Basic_OptCAM``'s own
default ``norm`` takes its absolute value). The mask multiplies the image in pixel space (their
model starts with the normalisation), so masked pixels are black: we mask
``to_pixels(x)`` and normalise again. Every ``max(1, T // 10)`` steps the authors stop when the
loss has risen since the last check and return the map of the current weights; their loss sums
over the batch, so their stop (and the maps) depend on the batch. We stop each image on its own
loss (the authors' code at batch size 1) and keep running the others, so batching does not
change maps. They explain the dataset label; we explain ``targets`` (the runner's choice).

The B images of a batch share one Adam over a (B, K) parameter (Adam is element-wise and the
images' losses are independent). Every iteration is a forward pass of the masked images and a
backward pass through the whole model down to the mask; the activations come from the clean pass.
Cost: (1 + T) forward passes and T input backward passes (an upper bound when images stop early).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cambench.device import autocast
from cambench.methods.base import CAMMethod, Forward, MethodError, minmax, register, upsample, weighted_sum
from cambench.models.engine import Passes


@register("opticam")
class OptiCAM(CAMMethod):
    paper = "Zhang et al., CVIU 2024"
    summary = "Opti-CAM (authors' code): L = sum_k softmax(u)_k ReLU(A_k), u maximising y_c(x * minmax(up(L))); Adam"
    checked = "authors' algorithm on a stub; a stub with a known optimum"
    cost = "(1 + T)F + T Bx"
    needs_input_gradients = True

    @dataclass
    class Params(CAMMethod.Params):
        iterations: int = 100
        lr: float = 0.01

        def check(self) -> None:
            if self.iterations < 1 or self.lr <= 0:
                raise MethodError(f"opticam needs iterations >= 1 and lr > 0, got {self.iterations} and {self.lr}")

    def passes(self, channels: int, positions: int) -> Passes:
        return Passes(forward=1 + self.iterations, input_backward=self.iterations)

    def raw_map(self, fw: Forward) -> Tensor:
        features = torch.relu(fw.activations[-1])
        pixels = self.engine.preprocessing.to_pixels(fw.images)
        u = torch.full(features.shape[:2], 0.5, device=features.device, requires_grad=True)
        adam = torch.optim.Adam([u], lr=self.lr)
        kept = u.detach().clone()  # the weights of images that stopped, as they stopped
        stopped = torch.zeros(len(u), dtype=torch.bool, device=u.device)
        last = torch.full((len(u),), -torch.inf, device=u.device)  # each image's score at the last check
        every = max(1, self.iterations // 10)
        for step in range(self.iterations):
            mask = minmax(upsample(weighted_sum(u.softmax(1), features), pixels.shape[-2:]))
            masked = self.engine.preprocessing.from_pixels(pixels * mask[:, None].to(pixels.dtype))
            with autocast(masked.device, self.engine.autocast_dtype):
                logits = self.engine.model(masked)
            score = logits.float().gather(1, fw.targets[:, None])[:, 0]
            (grad,) = torch.autograd.grad(-score.sum(), u)  # the loss sum_i y(x_i) - y(x_i * M_i), less a constant
            if step % every == 0:
                stop = ~stopped & (score.detach() < last)  # the loss rose since the last check
                kept[stop] = u.detach()[stop]
                stopped |= stop
                last = torch.where(stopped, last, score.detach())
                if stopped.all():
                    break
            u.grad = grad
            adam.step()
        weights = torch.where(stopped[:, None], kept, u.detach()).softmax(1)
        return weighted_sum(weights, features)
