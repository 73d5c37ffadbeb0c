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

from cambench.data.base import IMAGENET_MEAN, IMAGENET_STD
from cambench.models import checkpoints
from cambench.models.layers import default_target_layer, resolve_target_layer
from cambench.models.training import recipe_for, timed_train

log = logging.getLogger(__name__)


class ModelError(ValueError):
    pass


@dataclass(frozen=True)
class Preprocessing:
    """What a dataset of image files must do to feed the model (torchvision's ImageClassification)."""

    resize_size: int = 256
    crop_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    @classmethod
    def from_weights(cls, weights: WeightsEnum) -> Preprocessing:
        t = weights.transforms()
        return cls(t.resize_size[0], t.crop_size[0], tuple(t.mean), tuple(t.std), t.interpolation.value)


@dataclass
class LoadedModel:
    model: nn.Module
    preprocessing: Preprocessing
    num_classes: int
    weights: str  # what was loaded, for the results
    target_layer: str  # dotted path of the validated target layer


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


def check_target_layer(arch: str, num_classes: int, target_layer: str | None) -> str:
    """Resolve the target layer on a weightless (meta-device) skeleton: fails before any download
    or training."""
    with torch.device("meta"):
        skeleton = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    path = target_layer or default_target_layer(arch, skeleton)
    resolve_target_layer(skeleton, path)
    return path


def build_model(
    arch: str, weights: str, num_classes: int, dataset: str, target_layer: str | None = None
) -> LoadedModel:
    """Build ``arch`` with ``weights`` for a dataset of ``num_classes`` classes."""
    if arch not in available_models():
        raise ModelError(f"unknown model {arch!r}; torchvision classification models: {', '.join(available_models())}")
    layer = check_target_layer(arch, num_classes, target_layer)
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
    return LoadedModel(model.eval().requires_grad_(False), preprocessing, num_classes, weights, layer)
