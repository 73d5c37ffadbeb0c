"""Build a torchvision classifier by name with the requested weights, and its preprocessing.

``weights`` is one of:
- ``auto``: ``reference`` on the ``shapes`` dataset, torchvision's ``DEFAULT`` weights elsewhere;
- ``reference``: the project's own checkpoint for ``shapes`` (shipped, cached, or trained once);
- ``random``: untrained, for sanity checks;
- a path to a local checkpoint (``.safetensors``, ``.pt``, ``.pth``);
- a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ...).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from cambench.data.preprocessing import Preprocessing
from cambench.errors import CambenchError
from cambench.models import checkpoints
from cambench.models.layers import check_feature_maps, default_target_layer, resolve_target_layer
from cambench.models.training import recipe_for, timed_train

log = logging.getLogger(__name__)


class ModelError(CambenchError):
    pass


@dataclass
class LoadedModel:
    model: nn.Module
    preprocessing: Preprocessing
    num_classes: int
    weights: str  # what was loaded, for the results
    target_layers: list[str]  # dotted paths of the validated target layers


def available_models() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _torchvision_weights(arch: str, name: str) -> WeightsEnum:
    enum = torchvision.models.get_model_weights(arch)
    try:
        return enum[name]
    except KeyError:
        valid = ["DEFAULT", *enum.__members__]
        raise ModelError(
            f"unknown weights {name!r} for {arch}; valid: auto, reference, random, a checkpoint path, or one of "
            f"{', '.join(valid)}"
        ) from None


def _download(arch: str, weights: WeightsEnum) -> nn.Module:
    try:
        return torchvision.models.get_model(arch, weights=weights)
    except OSError as err:  # URLError when offline
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise ModelError(
            f"could not download {weights} ({err}). Offline? Put the file {Path(weights.url).name} into {cache} "
            "(or set TORCH_HOME), or use model.weights=reference with dataset=shapes"
        ) from None


def _reference(arch: str, num_classes: int) -> nn.Module:
    model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if checkpoints.find_reference(arch) is None:
        folder = checkpoints.cache_dir() / "checkpoints"
        recipe = recipe_for(arch)
        log.warning(
            "No shipped shapes checkpoint for %s: training one now with the reference recipe (%s). This runs "
            "once (minutes on a GPU, longer on a CPU: an estimate follows); the result is cached in %s and "
            "reused by later runs.",
            arch,
            recipe,
            folder,
        )
        trained, card = timed_train(arch, recipe, device="cuda" if torch.cuda.is_available() else "cpu")
        checkpoints.save_reference(arch, trained, card, folder)
        log.info("cached %s (held-out accuracy %.3f)", folder, card["test_accuracy"])
    record = checkpoints.load_reference(arch, model)
    log.info("loaded the shapes reference of %s (held-out accuracy %.3f)", arch, record["test_accuracy"])
    return model


def skeleton(arch: str, num_classes: int) -> nn.Module:
    """``arch`` without weights on the meta device (no memory, no init cost); on the CPU for the few
    architectures whose initialisation cannot run on meta (RegNet)."""
    try:
        with torch.device("meta"):
            return torchvision.models.get_model(arch, weights=None, num_classes=num_classes).eval()
    except NotImplementedError:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes).eval()


def check_target_layers(arch: str, num_classes: int, target_layers: list[str] | None) -> list[str]:
    """Resolve and check the target layers on a weightless skeleton: fails before any download or training."""
    model = skeleton(arch, num_classes)
    paths = target_layers or [default_target_layer(model, arch)]
    for path in paths:
        resolve_target_layer(model, path)
    check_feature_maps(model, paths)
    return paths


def build_model(
    arch: str, weights: str, num_classes: int, dataset: str, target_layers: list[str] | None = None
) -> LoadedModel:
    """Build ``arch`` with ``weights`` for a dataset of ``num_classes`` classes."""
    if arch not in available_models():
        raise ModelError(f"unknown model {arch!r}; torchvision classification models: {', '.join(available_models())}")
    layers = check_target_layers(arch, num_classes, target_layers)
    if weights == "auto":
        weights = "reference" if dataset == "shapes" else "DEFAULT"
    shapes_preprocessing = Preprocessing()  # shapes renders model-ready 224 px images itself
    if weights == "reference":
        if dataset != "shapes":
            raise ModelError("model.weights=reference exists for dataset=shapes only; use DEFAULT or a checkpoint")
        model, preprocessing = _reference(arch, num_classes), shapes_preprocessing
    elif weights == "random":
        torch.manual_seed(0)
        model, preprocessing = (
            torchvision.models.get_model(arch, weights=None, num_classes=num_classes),
            Preprocessing(),
        )
    elif weights.endswith((".safetensors", ".pt", ".pth")) or Path(weights).is_file():
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        checkpoints.load_into(model, Path(weights).expanduser())
        preprocessing = Preprocessing()
    else:
        enum = _torchvision_weights(arch, weights)
        classes = len(enum.meta["categories"])
        if classes != num_classes:
            raise ModelError(
                f"{enum} predicts {classes} classes but dataset {dataset} has {num_classes}; "
                "use a dataset labelled in that class space or a checkpoint trained for it"
            )
        model, preprocessing = _download(arch, enum), Preprocessing.from_weights(enum)
        weights = str(enum)
    return LoadedModel(model.eval().requires_grad_(False), preprocessing, num_classes, weights, layers)
