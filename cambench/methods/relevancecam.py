"""Relevance-CAM. Lee, Kim, Park, Eo and Hwang, "Relevance-CAM: Your Model Already Knows Where to
Look", CVPR 2021, https://openaccess.thecvf.com/content/CVPR2021/html/Lee_Relevance-CAM_Your_Model_Already_Knows_Where_To_Look_CVPR_2021_paper.html
(as the authors' code, mongeoroo/Relevance-CAM).

    R = LRP relevance at the target layer's output, propagated from the output relevance
        R_out = 1 at the class c, -1/N at the other classes (N classes; ``CLRP`` in the code's
        ``modules/resnet.py`` line 281 and ``modules/vgg.py`` line 111: not multiplied by the logit)
    w_k = sum_ij R_k(ij),    L = ReLU(sum_k w_k A_k)

The code weights by the mean of R over positions (``resnet.py`` line 314, ``vgg.py`` line 142:
the paper's sum divided by h w, the same normalised map) and min-max normalises sum_k w_k A_k
without the paper's ReLU (``LRP_util.py`` ``tensor2image``; the base applies ReLU, as the paper).
LRP rules of the code (``modules/layers.py``, ``relprop`` with alpha = 1), and the zennit
composite that gives them (zennit's ``ExcitationBackprop`` with ``zero_params="bias"``, plus
``Pass`` for activations and batch norms):

* Conv2d and Linear (lines 476 and 331): alpha1-beta0, the z+ rule for positive inputs with
  positive weights and negative inputs with negative weights,
  R_i = sum_j (x+_i w+_ij + x-_i w-_ij) R_j / z_j (zennit ``ZPlus``, bias zeroed). The code leaves
  the bias out for linear layers but adds the conv bias twice to z_j (``Conv2d.relprop`` passes
  ``bias=self.bias`` to both halves); we follow the z+ rule (this matters only for convolutions
  with a bias, VGG's).
* BatchNorm2d (line 282): relevance passes through (R x w / (x w + 1e-9) = R): zennit ``Pass``.
  zennit's canonical ``SequentialMergeBatchNorm`` (in its ``ResNetCanonizer`` and
  ``VGGCanonizer``) folds the batch norm into the convolution before it instead: the same
  relevance while every scale gamma / sigma is positive, different where one is negative (the
  folded weights change sign); the tests show both.
* ReLU, Dropout: pass (``Pass``); max pooling: winner takes all (its gradient, as the code's
  ``RelPropSimple``); average pooling and the residual sum: proportional to the inputs (zennit
  ``Norm``; the code's ``AdaptiveAvgPool2d.relprop`` line 127 and ``Add`` line 158), with
  zennit's canonizers that make a ResNet block's sum a module.
* Beyond the code (it has ResNet and VGG only), MobileNetV3: Hardswish passes relevance as ReLU
  does, the inverted residual's sum is proportional (a canonizer as zennit's ResNet ones), and
  the squeeze-excitation gate is a constant per-channel scale, so all of its relevance goes to
  the gated signal (LRP's usual treatment of multiplicative gates; any rule of an element-wise
  scale passes relevance through).

Denominators are divided exactly, giving zero where one is zero, as the code's ``safe_divide``
(line 10): zennit's default stabiliser (z +- 1e-6) absorbs most of the relevance of a network of
small activations (a randomly initialised MobileNetV3's logits are about 1e-10). The LRP pass
runs on the whole model (``engine.model``, not under autocast): without autograd up to the target layer, whose
output (at its last call, as the split) becomes a leaf, so the modified backward runs from the
output down to the target layer only. That one pass also gives A and the prediction (the LRP
hooks leave the forward values as they are), so the split's pass is not run. The canonizers and
hooks are removed afterwards, leaving the model as it was. Models other than torchvision's ResNet,
VGG and MobileNetV3 (or ``nn.Sequential`` chains of their layers) fail at start. Cost: one
forward pass, and an LRP backward through the layers after the target layer, in which each z+
layer runs forward twice (on x+ with w+ and on x- with w-) and backward through both:
1F + 2T + 2B.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torchvision.models.mobilenetv3 import InvertedResidual, MobileNetV3
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.models.vgg import VGG
from torchvision.ops.misc import SqueezeExcitation

from cambench.methods.base import CAMMethod, Forward, MethodError, register, weighted_sum
from cambench.models.engine import Passes
from cambench.models.split import SplitModel

if TYPE_CHECKING:  # zennit is imported when a Relevance-CAM is built, not with the package
    from zennit.composites import ExcitationBackprop

# modules whose LRP is defined here: containers whose forward is known, and layers with a rule
CONTAINERS = (nn.Sequential, ResNet, BasicBlock, Bottleneck, VGG, MobileNetV3, InvertedResidual, SqueezeExcitation)
LAYERS = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Dropout,
    nn.Flatten,
    nn.Identity,
)


def _residual_forward(self: InvertedResidual, x: Tensor) -> Tensor:
    """InvertedResidual with a residual connection, its sum a module (for the proportional rule)."""
    return self.canonizer_sum(torch.stack([x, self.block(x)], dim=-1))


def _gated_forward(self: SqueezeExcitation, x: Tensor) -> Tensor:
    """scale * x with the scale a constant: relevance (and gradient) pass through to x unchanged."""
    with torch.no_grad():
        gate = self._scale(x.detach()) - 1
    return x + x.detach() * gate


def _mobilenet_v3_attributes(name: str, module: nn.Module) -> dict | None:
    from zennit.layer import Sum

    if isinstance(module, InvertedResidual) and module.use_res_connect:
        return {"forward": _residual_forward.__get__(module), "canonizer_sum": Sum()}
    if isinstance(module, SqueezeExcitation):
        return {"forward": _gated_forward.__get__(module)}
    return None


def safe_denominator(z: Tensor) -> Tensor:
    """The code's ``safe_divide``: exact division, and zero where the denominator is zero (dividing by inf)."""
    return torch.where(z == 0, torch.inf, z)


def composite(within: set[str] | None = None) -> ExcitationBackprop:
    """The authors' rules (see the module docstring) as a zennit composite, with its canonizers,
    which rewrite only the blocks named in ``within`` (all blocks when None)."""
    from zennit.canonizers import AttributeCanonizer
    from zennit.composites import ExcitationBackprop
    from zennit.rules import Pass
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
    from zennit.types import Activation, BatchNorm

    maps = [
        ResNetBottleneckCanonizer().attribute_map,
        ResNetBasicBlockCanonizer().attribute_map,
        _mobilenet_v3_attributes,
    ]

    def attributes(name: str, module: nn.Module) -> dict | None:
        if within is not None and name not in within:
            return None
        return next((found for found in (m(name, module) for m in maps) if found is not None), None)

    return ExcitationBackprop(
        stabilizer=safe_denominator,
        layer_map=[(Activation, Pass()), (BatchNorm, Pass())],
        zero_params="bias",
        canonizers=[AttributeCanonizer(attributes)],
    )


def after_target(split: SplitModel) -> set[str] | None:
    """The modules that run after the first target layer and the blocks that hold them (their
    ancestors): the only blocks whose canonizers change the relevance at the target layer. The
    canonizers' stacked sums cost about as much as the forward pass itself, so blocks before the
    target keep their own forward. None with the hook fallback (no graph to read them from)."""
    if split.tail_is_full_forward:
        return None
    names = {n.target for stage in split.stages[1:] for n in stage.graph.nodes if n.op == "call_module"}
    return {".".join(name.split(".")[:i]) for name in names for i in range(name.count(".") + 2)}


@register("relevancecam")
class RelevanceCAM(CAMMethod):
    paper = "Lee et al., CVPR 2021"
    summary = (
        "Relevance-CAM (Lee et al., CVPR 2021, authors' code): w_k = sum_ij R_k(ij), the LRP (z+) relevance at the "
        "target layer from R_out = 1 at c, -1/N elsewhere"
    )
    checked = "hand-written LRP (z+, batch norm, residual sum) on a stub; relevance conservation"
    cost = "1F + 2T + 2B"
    needs_gradients = True  # a modified backward pass (LRP) from the output to the target layer

    def setup(self) -> None:
        self.composite = composite(after_target(self.engine.split))

    @classmethod
    def check_model(cls, split: SplitModel) -> None:
        super().check_model(split)
        for path, module in split.model.named_modules():
            if not isinstance(module, CONTAINERS + LAYERS):
                raise MethodError(
                    f"relevancecam has LRP rules for torchvision ResNet, VGG and MobileNetV3 (and nn.Sequential chains "
                    f"of their layers); module {path or 'model'} is a {type(module).__name__}: choose one of those "
                    "models or another method"
                )

    def passes(self, channels: int, positions: int) -> Passes:
        return Passes(forward=1, backward=2, tail=2)

    def forward(
        self,
        images: Tensor,
        targets: Tensor | None = None,
        gradients: bool | None = None,
        ids: Sequence[str] | None = None,
    ) -> Forward:
        """One pass of the whole model with the LRP hooks: A (the target layer's output at its last call, as
        the split), the prediction, and in place of d y_c / d A the relevance R at the target layer (the
        modified gradient of the LRP backward pass)."""
        model = self.engine.model
        leaves: list[Tensor] = []

        def cut(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
            torch.set_grad_enabled(True)  # autograd from here on: the LRP backward stops at the target layer
            leaves.append(output.detach().requires_grad_(True))
            return leaves[-1].clone()  # in-place ops after the layer leave the leaf intact

        with self.composite.context(model):
            handle = model.get_submodule(self.engine.split.layers[0]).register_forward_hook(cut)
            try:
                with torch.no_grad():
                    logits = model(images)
            finally:
                handle.remove()
            if not logits.requires_grad:
                raise MethodError(
                    f"relevancecam: no relevance reaches {self.engine.split.layers[0]}, inside a squeeze-excitation "
                    "gate (LRP treats the gate as a constant); choose another model.target_layer"
                )
            targets = logits.argmax(1) if targets is None else targets
            initial = torch.full_like(logits, -1 / logits.shape[1]).scatter_(1, targets[:, None], 1.0)
            (relevance,) = torch.autograd.grad(logits, leaves[-1], initial)
        return Forward(images, [(leaves[-1].detach(),)], logits.detach().float(), targets, [relevance.float()])

    def raw_map(self, fw: Forward) -> Tensor:
        return weighted_sum(fw.gradients[-1].sum((2, 3)), fw.activations[-1])

    def relevance(self, images: Tensor, targets: Tensor) -> Tensor:
        """(B, K, h, w) LRP relevance at the target layer's output."""
        with torch.inference_mode(False), torch.enable_grad():
            return self.forward(images, targets).gradients[-1]
