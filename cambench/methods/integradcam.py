"""InteGrad-CAM: the seed project's Grad-CAM with integrated gradients (tetutaro/class_activation_mapping,
``cam/models/integrad_cam.py`` and ``NetworkWeight._integrate_grad``), after Sundararajan et al.,
"Axiomatic Attribution for Deep Networks", ICML 2017, https://arxiv.org/abs/1703.01365.

Grad-CAM whose gradients are averaged over M points on the straight path from a baseline b to x:

    x_m = b + (m / M)(x - b),   m = 1 .. M   (x_M = x; the baseline itself is not a point)
    w_k = mean_ij (1/M) sum_m dy_c/dA_k(x_m),    L = ReLU(sum_k w_k A_k(x))

y_c is the logit and the activations are those of x, as the seed's code does (it keeps the
activations of the last path point, x itself, and averages the gradients; ``range(1, M + 1)``,
M = ``n_divides`` = 8). The seed's baseline was a bug: a tensor of 128 x the normalised value of
pixel 1/255, not an image. Ours is a real image in the model's input space: ``black`` (RGB 0,
``preprocessing.from_pixels(0)``, the usual Integrated Gradients baseline) or ``zeros`` (0 in the
normalised space: the dataset's mean colour). With M = 1 this is Grad-CAM.

The last path point is x, whose activations and gradients the clean pass gives; the other M - 1
points go through the model in chunks of the size the scorer found fastest for full passes on
this device (as Smooth Grad-CAM++ does), with backward passes through the layers after the
target layer only. Cost: M forward and M backward passes.

:class:`PathMethod` (path points, baselines, the chunked pass) is shared with Integrated Grad-CAM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from cambench.methods.base import Forward, GradientMethod, MethodError, register, weighted_sum
from cambench.models.engine import Passes

BASELINES = ("black", "zeros")


class PathMethod(GradientMethod):
    """A method that averages a per-point term over x_m = b + (m / M)(x - b), m = 1 .. M."""

    @dataclass
    class Params(GradientMethod.Params):
        steps: int = 8  # path points M
        baseline: str = "black"  # b: black (the normalised black image) | zeros (zeros of the model input)

        def check(self) -> None:
            if self.steps < 1:
                raise MethodError(f"steps must be >= 1 (path points), got {self.steps}")
            if self.baseline not in BASELINES:
                raise MethodError(f"unknown baseline {self.baseline!r}; valid: {', '.join(BASELINES)}")

    def start(self, images: Tensor) -> Tensor:
        """The baseline b, (1, C, H, W) in the model's input space: the same for every image."""
        zeros = images.new_zeros((1, *images.shape[1:]))
        return self.engine.preprocessing.from_pixels(zeros) if self.baseline == "black" else zeros

    def path_mean(self, fw: Forward, term: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """Per image, (1/M) sum_m term(A(x_m), dy_c/dA(x_m)) over the path points, m = 1 .. M."""
        images, n, steps = fw.images, len(fw.images), self.steps
        total = term(fw.activations[-1], fw.gradients[-1])  # m = M: x itself, from the clean pass
        if steps == 1:
            return total
        # row r: point m = r % (M - 1) + 1 of image r // (M - 1)
        owner = torch.arange(n, device=images.device).repeat_interleave(steps - 1)
        alpha = torch.arange(1, steps, device=images.device).repeat(n).to(images.dtype) / steps
        start = self.start(images)
        # rows a pass: what the scorer found fastest for full passes on this device, else the caller's batch
        chunk = self.engine.scorer.settled_chunk(None, tuple(images.shape[1:])) or n
        for rows in torch.arange(len(owner), device=images.device).split(chunk):
            points = start + alpha[rows, None, None, None] * (images[owner[rows]] - start)
            out = self.forward(points, fw.targets[owner[rows]], gradients=True)
            total = total.index_add(0, owner[rows], term(out.activations[-1], out.gradients[-1]))
        return total / steps


@register("integradcam")
class InteGradCAM(PathMethod):
    paper = "seed project, after Sundararajan et al., ICML 2017"
    summary = "InteGrad-CAM (seed project): Grad-CAM with g averaged over x_m = b + (m/M)(x - b), m = 1..M; A of x"
    checked = "formula (Grad-CAM at M = 1)"
    cost = "M F + M B"

    def passes(self, channels: int, positions: int) -> Passes:
        return Passes(forward=self.steps, backward=self.steps)

    def raw_map(self, fw: Forward) -> Tensor:
        weights = self.path_mean(fw, lambda a, g: g.mean(dim=(2, 3)))
        return weighted_sum(weights, fw.activations[-1])
