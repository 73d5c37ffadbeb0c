"""Datasets by config name: each has a schema (its YAML's keys), a class count known before the
model is built, and a builder that takes the model's preprocessing. Every schema carries the grid
options (``dataset.grid``, ``dataset.grid_confidence``: mosaics for the grid pointing game, see
``cambench.data.grid``); the runner builds the mosaics over the dataset once the model is loaded.
The datasets of image files also take ``dataset.resize_size`` and ``dataset.crop_size`` (null: the
model weights' own), so a protocol can ask for another resize than the weights' (Poppi et al.'s
code: Resize(224) + CenterCrop(224)); the normalisation stays the weights'."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING
from torch.utils.data import Dataset

from cambench.data.base import DatasetError
from cambench.data.grid import grid_options
from cambench.data.preprocessing import Preprocessing
from cambench.data.shapes import SHAPE_CLASSES
from cambench.data.shapes_dataset import ShapesDataset


@grid_options
@dataclass
class ShapesConfig:
    name: str = "shapes"
    split: str = "test"  # 10,000 scenes a split; runner.num_images chooses how many are evaluated
    image_size: int = 224
    seed: int | None = None  # null: the split's own seed


@dataclass
class ImageFilesConfig:
    """Options of every dataset of image files: the resize (shorter side) and centre crop before the model."""

    resize_size: int | None = None  # null: the model weights' own (256 for most torchvision weights)
    crop_size: int | None = None  # null: the model weights' own (224)


@grid_options
@dataclass
class ImageNetConfig(ImageFilesConfig):
    name: str = "imagenet"
    root: str = MISSING  # the validation images: 1000 wnid folders, or flat files with labels_file
    labels_file: str | None = None
    class_index_file: str | None = None
    boxes_dir: str | None = None  # ILSVRC XML annotations: ground-truth masks from the boxes


@grid_options
@dataclass
class FolderConfig(ImageFilesConfig):
    name: str = "folder"
    root: str = MISSING
    class_map: dict[str, int] | None = None  # folder name -> model class index
    num_classes: int | None = None  # the model's class count; null: 1000 with a class_map, else #folders


@grid_options
@dataclass
class ImagenetteConfig(ImageFilesConfig):
    name: str = "imagenette"
    root: str = "${oc.env:HOME}/.cache/cambench/imagenette"
    split: str = "val"
    size: str = "320px"
    download: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    schema: type
    num_classes: Callable[[Any], int]
    build: Callable[[Any, Any], Dataset]
    has_masks: Callable[[Any], bool] = lambda cfg: False  # known before the dataset is built
    has_distractors: Callable[[Any], bool] = lambda cfg: False  # masks of objects of no class (shapes)

    def capabilities(self, cfg: Any) -> set[str]:
        """What the dataset gives the metrics (keys of ``cambench.metrics.base.CAPABILITIES``). With
        ``dataset.grid`` the items are mosaic cells: their masks are the cells, for the grid metrics only
        (no object masks, no distractors)."""
        if getattr(cfg, "grid", None):
            return {"grid"}
        given = {"masks": self.has_masks(cfg), "distractors": self.has_distractors(cfg)}
        return {name for name, has in given.items() if has}


def _folder_classes(cfg: FolderConfig) -> int:
    """The class count FolderDataset will use, known before the model (and so the transform) exists."""
    if cfg.num_classes is not None:
        return cfg.num_classes
    if cfg.class_map:
        return _files().IMAGENET_CLASSES
    return len(_files().class_folders(Path(cfg.root).expanduser()))


def sized(cfg: ImageFilesConfig, preprocessing: Preprocessing) -> Preprocessing:
    """The model's preprocessing with the dataset's ``resize_size`` and ``crop_size`` where they are set."""
    resize = preprocessing.resize_size if cfg.resize_size is None else cfg.resize_size
    crop = preprocessing.crop_size if cfg.crop_size is None else cfg.crop_size
    if crop < 1 or resize < crop:
        raise DatasetError(
            f"dataset.crop_size ({crop}) must be >= 1 and at most the resize (dataset.resize_size, {resize}): "
            "a larger crop would pad the image; set dataset.resize_size >= dataset.crop_size"
        )
    return dataclasses.replace(preprocessing, resize_size=resize, crop_size=crop)


def _files():  # imported lazily: PIL and torchvision.datasets are not needed for shapes
    from cambench.data import files

    return files


DATASETS: dict[str, DatasetSpec] = {
    "shapes": DatasetSpec(
        ShapesConfig,
        lambda cfg: len(SHAPE_CLASSES),
        lambda cfg, prep: ShapesDataset(cfg.split, image_size=cfg.image_size, seed=cfg.seed),
        lambda cfg: True,
        lambda cfg: True,
    ),
    "imagenet": DatasetSpec(
        ImageNetConfig,
        lambda cfg: 1000,
        lambda cfg, prep: _files().ImageNetValDataset(
            cfg.root,
            sized(cfg, prep),
            labels_file=cfg.labels_file,
            boxes_dir=cfg.boxes_dir,
            class_index_file=cfg.class_index_file,
        ),
        lambda cfg: cfg.boxes_dir is not None,
    ),
    "folder": DatasetSpec(
        FolderConfig,
        _folder_classes,
        lambda cfg, prep: _files().FolderDataset(
            cfg.root,
            sized(cfg, prep),
            class_map=dict(cfg.class_map) if cfg.class_map else None,
            num_classes=cfg.num_classes,
        ),
    ),
    "imagenette": DatasetSpec(
        ImagenetteConfig,
        lambda cfg: 1000,
        lambda cfg, prep: _files().ImagenetteDataset(
            cfg.root, sized(cfg, prep), split=cfg.split, size=cfg.size, download=cfg.download
        ),
    ),
}
