"""CAM. Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016,
https://arxiv.org/abs/1512.04150.

    w_k = W_ck (the weight of the linear classifier for class c),   L = ReLU(sum_k w_k A_k)

The paper's map is sum_k w_k A_k; the ReLU is the one every method here gets (as in pytorch-grad-cam).
TorchCAM, like Zhou et al.'s released code, min-max normalises the map without it; the tests show the
difference.
Only defined when global average pooling and one linear layer follow the target layer (ResNet at
``layer4``); other heads (VGG's three linear layers, MobileNetV3's two) fail at start. On such a
head Grad-CAM gives the same map. One forward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn

from cambench.methods.base import CAMMethod, Forward, MethodError, register, weighted_sum
from cambench.models.split import SplitModel

FLATTEN = (torch.flatten, "flatten", "view", "reshape", "squeeze")


def _is_global_pool(node: fx.Node, module: nn.Module | None) -> bool:
    if node.op == "call_module":
        return isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))
    return node.op == "call_method" and node.target == "mean" and tuple(node.args[1:2]) in (((2, 3),), ([2, 3],))


def linear_head(split: SplitModel) -> nn.Linear | None:
    """The linear layer of a tail that is exactly global average pooling, flattening, one linear layer."""
    if split.mode != "fx" or len(split.stages[-1].graph.find_nodes(op="placeholder")) != 1:
        return None
    tail = split.stages[-1]
    ops = [n for n in tail.graph.nodes if n.op not in ("placeholder", "output")]
    modules = [tail.get_submodule(n.target) if n.op == "call_module" else None for n in ops]
    if len(ops) == 2:  # the pooling may flatten itself (mean over (2, 3))
        ops, modules = [ops[0], None, ops[1]], [modules[0], None, modules[1]]
    if len(ops) != 3 or not _is_global_pool(ops[0], modules[0]):
        return None
    if ops[1] is not None and ops[1].target not in FLATTEN:
        return None
    return modules[2] if isinstance(modules[2], nn.Linear) else None


@register("cam")
class CAM(CAMMethod):
    paper = "Zhou et al., CVPR 2016"
    summary = "CAM: w_k = W_ck of the linear head (GAP + one linear layer only)"
    checked = "TorchCAM"

    @classmethod
    def check_model(cls, split: SplitModel) -> None:
        super().check_model(split)
        if linear_head(split) is None:
            after = (
                ", ".join(
                    n.meta.get("module_path", n.target)
                    if isinstance(n.target, str)
                    else getattr(n.target, "__name__", str(n.target))
                    for n in split.stages[-1].graph.nodes
                    if n.op in ("call_module", "call_function")
                )
                if split.mode == "fx"
                else "an untraceable model"
            )
            raise MethodError(
                f"cam needs global average pooling and one linear layer right after the target layer "
                f"{split.layers[-1]} (as ResNet at layer4), but the model continues with: {after}. "
                "Use method=gradcam, which is CAM on such heads, or a ResNet at layer4"
            )

    def setup(self) -> None:
        self.linear = linear_head(self.engine.split)

    def raw_map(self, fw: Forward) -> Tensor:
        return weighted_sum(self.linear.weight.float()[fw.targets], fw.activations[-1])
