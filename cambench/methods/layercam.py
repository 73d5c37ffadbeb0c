"""LayerCAM. Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for
Localization", IEEE TIP 2021, https://doi.org/10.1109/TIP.2021.3089943.

    L^l(i, j) = ReLU(sum_k ReLU(dy_c/dA^l_k(i, j)) A^l_k(i, j))      for each target layer l

With several target layers (``model.target_layer=[layer2,layer3,layer4]``) the maps are fused as
the paper does: each map is divided by its maximum, the maps of the shallower layers are scaled
by tanh(gamma * L / max L) with gamma = 2, all are upsampled to the finest map's resolution and
fused by an element-wise maximum. TorchCAM's ``fuse_cams`` min-max normalises and scales the
deepest map too; the tests show the difference. One forward pass and one backward pass from the output down to the
shallowest target layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cambench.methods.base import Forward, GradientMethod, register, upsample


@register("layercam")
class LayerCAM(GradientMethod):
    paper = "Jiang et al., IEEE TIP 2021"
    summary = "LayerCAM: L = ReLU(sum_k ReLU(g_k) * A_k); several layers fused (tanh scaling, max)"
    checked = "pytorch-grad-cam, TorchCAM (one layer)"
    multi_layer = True

    @dataclass
    class Params(GradientMethod.Params):
        gamma: float = 2.0

    def cam(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return (torch.relu(gradients) * activations).sum(1)

    def raw_map(self, fw: Forward) -> Tensor:
        maps = [self.cam(a, g) for a, g in zip(fw.activations, fw.gradients, strict=True)]
        if len(maps) == 1:
            return maps[0]
        size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        relative = [torch.relu(m) / torch.relu(m).amax(dim=(1, 2), keepdim=True).clamp_min(1e-30) for m in maps]
        scaled = [torch.tanh(self.gamma * m) for m in relative[:-1]] + relative[-1:]
        return torch.stack([upsample(m, size) for m in scaled]).amax(0)
