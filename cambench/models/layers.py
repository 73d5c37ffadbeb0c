"""Target layers: a default per architecture family, or any module by dotted path."""

from __future__ import annotations

import difflib

from torch import nn


class TargetLayerError(ValueError):
    pass


def family(arch: str) -> str:
    for prefix in ("resnet", "vgg", "mobilenet_v3"):
        if arch.startswith(prefix):
            return prefix
    return arch


def default_target_layer(arch: str, model: nn.Module) -> str:
    """ResNet: ``layer4``; VGG: the last ReLU of ``features``; MobileNetV3: the last feature block."""
    fam = family(arch)
    if fam == "resnet":
        return "layer4"
    if fam == "vgg":
        last_relu = max(i for i, m in enumerate(model.features) if isinstance(m, nn.ReLU))
        return f"features.{last_relu}"
    if fam == "mobilenet_v3":
        return f"features.{len(model.features) - 1}"
    raise TargetLayerError(
        f"no default target layer for {arch!r}; set model.target_layer to a module path, "
        f"for example one of: {', '.join(candidates(model)[-8:])}"
    )


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
