"""Target layers: a default per architecture family, or any module by dotted path."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence

import torch
from torch import nn

from cambench.errors import CambenchError

log = logging.getLogger(__name__)
PROBE_SIZES = (224, 160)  # two input sizes: spatial dims follow the input, the channel dim does not


class TargetLayerError(CambenchError):
    pass


# torchvision's classes of the families with a default target layer, by the family's architecture prefix
FAMILY_CLASSES = {"ResNet": "resnet", "VGG": "vgg", "MobileNetV3": "mobilenet_v3"}


def family(model: str | nn.Module) -> str:
    """``resnet``, ``vgg`` or ``mobilenet_v3`` for an architecture name (``resnet50``) or a model of those
    torchvision classes; else the name (or the class name)."""
    if isinstance(model, nn.Module):
        return FAMILY_CLASSES.get(type(model).__name__, type(model).__name__)
    for prefix in FAMILY_CLASSES.values():
        if model.startswith(prefix):
            return prefix
    return model


def default_target_layer(model: nn.Module, arch: str | None = None) -> str:
    """ResNet: ``layer4``; VGG: the last ReLU of ``features``; MobileNetV3: the last feature block.
    The family comes from ``arch`` (a torchvision name) when given, else from the model's class."""
    fam = family(arch or model)
    if fam == "resnet":
        return "layer4"
    if fam == "vgg":
        last_relu = max(i for i, m in enumerate(model.features) if isinstance(m, nn.ReLU))
        return f"features.{last_relu}"
    if fam == "mobilenet_v3":
        return f"features.{len(model.features) - 1}"
    raise TargetLayerError(
        f"no default target layer for {arch or type(model).__name__!r}; set model.target_layer (target_layer= "
        f"in Python) to a module path, for example one of: {', '.join(feature_map_layers(model)[-8:])}"
    )


def layer_paths(model: nn.Module, layers: str | nn.Module | Sequence[str | nn.Module] | None) -> list[str]:
    """Dotted paths of target ``layers`` given as paths or as modules of ``model`` (None: its default layer;
    an empty list: none, the model is not split)."""
    if layers is None:
        return [default_target_layer(model)]
    if isinstance(layers, list | tuple) and not layers:
        return []  # no split: the whole model as one stage (scoring only, or maps from elsewhere)
    names = {id(module): name for name, module in model.named_modules() if name}
    out = []
    for layer in [layers] if isinstance(layers, str | nn.Module) else list(layers):
        if isinstance(layer, nn.Module):
            if id(layer) not in names:
                raise TargetLayerError(f"target layer {type(layer).__name__} is not a submodule of the model")
            layer = names[id(layer)]
        if not isinstance(layer, str) or not layer:
            raise TargetLayerError(f"a target layer is a module path or a module, got {layer!r}")
        resolve_target_layer(model, layer)
        out.append(layer)
    return out


def candidates(model: nn.Module, max_depth: int = 2) -> list[str]:
    """Module paths of depth at most ``max_depth`` (``layer4``, ``layer4.1``, ...)."""
    return [name for name, _ in model.named_modules() if name and name.count(".") < max_depth]


def resolve_target_layer(model: nn.Module, path: str) -> nn.Module:
    """The module at dotted ``path``; an unknown path fails with the valid candidates."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        close = difflib.get_close_matches(path, names, n=3)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise TargetLayerError(
            f"model has no module {path!r}.{hint} Candidates: {', '.join(candidates(model))} "
            "(deeper modules by dotted path, e.g. layer4.1.conv2)"
        ) from None


def check_feature_maps(model: nn.Module, paths: list[str]) -> None:
    """Every target layer must output a (N, C, H, W) feature map with spatial extent.

    Run on the weightless skeleton with two input sizes before any download: a layer that is not
    called, or whose output is not 4-D (a Linear layer, a transformer block), channels-last
    (Swin's (N, H, W, C): its dim 1 follows the input size) or 1 x 1 fails with the reason and
    the layers that would do. A model the meta device cannot run is not checked here (its split
    fails on the first batch instead).
    """
    problems = output_problems(model, list(dict.fromkeys([*paths, *candidates(model)])))
    for path in paths:
        if problems and (reason := problems[path]):
            valid = [c for c, problem in problems.items() if c not in paths and problem is None]
            raise TargetLayerError(
                f"target layer {path} {reason}; CAM methods need a convolutional feature map (N, C, H, W). "
                f"Choose a layer that outputs one, e.g. one of: {', '.join(valid[-6:]) or 'none at depth <= 2'}"
            )


def feature_map_layers(model: nn.Module) -> list[str]:
    """The :func:`candidates` that output a feature map (all of them when the model cannot be probed)."""
    problems = output_problems(model, candidates(model))
    return [c for c, problem in problems.items() if problem is None] if problems else candidates(model)


def output_problems(model: nn.Module, paths: list[str]) -> dict[str, str | None] | None:
    """Per module path, why its output is no feature map (None when it is one), from forwards at
    :data:`PROBE_SIZES` on the model's device; None when not even the first forward runs."""
    shapes: dict[str, list[tuple | str]] = {p: [] for p in paths}
    handles = [
        model.get_submodule(p).register_forward_hook(
            lambda m, i, o, p=p: shapes[p].append(tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__)
        )
        for p in paths
    ]
    device = next(model.parameters()).device
    ran = 0
    try:
        with torch.no_grad():
            for size in PROBE_SIZES:
                model(torch.zeros(1, 3, size, size, device=device))
                ran += 1
    except Exception as err:  # an op without a meta kernel, or a model of one input size
        log.debug("meta-device shape check stopped at %d sizes: %s", ran, err)
    finally:
        for h in handles:
            h.remove()
    if ran == 0:
        return None

    def problem(seen: list[tuple | str]) -> str | None:
        if not seen:
            return "is not called in the model's forward pass"
        found = feature_map_problem(seen[0], seen[-1] if ran == len(PROBE_SIZES) else None)
        return found and f"outputs {found}"

    return {path: problem(seen) for path, seen in shapes.items()}


def feature_map_problem(first: tuple | str, second: tuple | str | None = None) -> str | None:
    """Why an output of shape ``first`` (and ``second`` at another input size) is no (N, C, H, W) map, or None."""
    if isinstance(first, str):
        return f"a {first}, not a tensor"
    if len(first) != 4:
        return f"shape {first} ({len(first)}-D)"
    if second is None:
        return None
    if first[1] != second[1]:
        return f"shape {first}, channels last (N, H, W, C): its dim 1 changes with the input size"
    if first[2] * first[3] == 1 and second[2] * second[3] == 1:
        return f"shape {first}: no spatial extent (1 x 1)"
    return None
