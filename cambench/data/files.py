"""Datasets of image files on disk, returning model-ready ``Sample``s.

- ``FolderDataset``: any ImageFolder tree, ``root/<class folder>/<image files>``;
- ``ImageNetValDataset``: the ImageNet-1k validation set, in class folders (``root/n01440764/...``) or flat
  (``root/ILSVRC2012_val_00000001.JPEG`` + a labels file), with optional ILSVRC XML bounding boxes as masks;
- ``ImagenetteDataset``: torchvision's ``Imagenette``, labelled with ImageNet-1k class indices.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.datasets import Imagenette
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension, make_dataset

from cambench.data.base import DatasetError, Sample
from cambench.data.preprocessing import Preprocessing
from cambench.data.transforms import build_transform

IMAGENET_CLASSES = 1000
WNID = re.compile(r"n\d{8}")
# Imagenette's wnids -> their ImageNet-1k indices (torchvision order: position in the sorted list of the 1000 wnids).
IMAGENETTE_TO_IMAGENET = {
    "n01440764": 0,  # tench
    "n02102040": 217,  # English springer
    "n02979186": 482,  # cassette player
    "n03000684": 491,  # chain saw
    "n03028079": 497,  # church
    "n03394916": 566,  # French horn
    "n03417042": 569,  # garbage truck
    "n03425413": 571,  # gas pump
    "n03445777": 574,  # golf ball
    "n03888257": 701,  # parachute
}
IMAGENETTE_FOLDERS = {"full": "imagenette2", "320px": "imagenette2-320", "160px": "imagenette2-160"}


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file as RGB; a corrupt, truncated or non-image file raises ``DatasetError``."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(
            f"cannot read image {path}: {err}. Remove or replace the file (it is corrupt, truncated or not an image)"
        ) from None


def _shorten(names: list[str], limit: int = 10) -> str:
    more = f" ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def class_folders(root: Path) -> list[str]:
    """Sorted names of the class folders in ``root``; hidden folders (``.ipynb_checkpoints``, ...) are skipped."""
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def _folder_items(root: Path, class_to_index: dict[str, int]) -> list[tuple[Path, int, str]]:
    """(path, label, id) of every image under ``root/<folder>/`` for the folders in ``class_to_index``."""
    found = make_dataset(root, class_to_index, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not found:
        raise DatasetError(f"no image files ({', '.join(IMG_EXTENSIONS)}) in the class folders of {root}")
    return [(Path(path), label, Path(path).relative_to(root).as_posix()) for path, label in found]


class _ImageFiles(Dataset):
    """A list of (path, label, id) read with ``load_image`` and transformed for the model; subclasses add masks."""

    num_classes: int
    has_masks = False

    def __init__(self, items: list[tuple[Path, int, str]], preprocessing: Preprocessing):
        self.items = items
        self.transform = build_transform(preprocessing)

    def __len__(self) -> int:
        return len(self.items)

    def labels(self) -> list[int]:
        """Every item's label, without reading an image (for stratified subsets)."""
        return [label for _, label, _ in self.items]

    def __getitem__(self, index: int) -> Sample:
        path, label, id_ = self.items[index]
        image = load_image(path)
        image_tensor, mask = self.transform(image, self._mask(index, image))
        return Sample(image_tensor, label, mask, id_)

    def _mask(self, index: int, image: Image.Image) -> tv_tensors.Mask | None:
        return None


class FolderDataset(_ImageFiles):
    """An ImageFolder tree ``root/<class folder>/**/<image>`` (torchvision's ``IMG_EXTENSIONS``); no masks.

    ``class_map`` maps folder names to the model's class indices (every folder must be mapped); without it the
    label is the folder's position in sorted order. ``num_classes`` defaults to 1000 with a ``class_map`` (an
    ImageNet model), else to the number of folders. Ids are paths relative to ``root``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        preprocessing: Preprocessing,
        class_map: dict[str, int] | None = None,
        num_classes: int | None = None,
    ):
        root = Path(root).expanduser()
        folders = class_folders(root)
        if not folders:
            raise DatasetError(f"no class folders in {root}; expected {root}/<class name>/<image files>")
        if class_map is None:
            class_map = {name: i for i, name in enumerate(folders)}
            self.num_classes = len(folders) if num_classes is None else num_classes
        else:
            unmapped = [name for name in folders if name not in class_map]
            if unmapped:
                raise DatasetError(f"class folders of {root} missing from the class map: {_shorten(unmapped)}")
            class_map = {name: class_map[name] for name in folders}
            self.num_classes = IMAGENET_CLASSES if num_classes is None else num_classes
        bad = [f"{name}={index}" for name, index in class_map.items() if not 0 <= index < self.num_classes]
        if bad:
            raise DatasetError(f"class indices outside 0..{self.num_classes - 1} in {root}: {_shorten(bad)}")
        super().__init__(_folder_items(root, class_map), preprocessing)


def _wnid_to_index(wnids: set[str], class_index_file: str | os.PathLike | None, source: str) -> dict[str, int]:
    """ImageNet's wnid -> torchvision class index, from ``class_index_file`` or from all 1000 wnids in ``source``."""
    if class_index_file is not None:
        try:
            mapping = json.loads(Path(class_index_file).read_text())
        except (OSError, ValueError) as err:
            raise DatasetError(f"cannot read class index file {class_index_file}: {err}") from None
        if not isinstance(mapping, dict) or not all(
            isinstance(i, int) and 0 <= i < IMAGENET_CLASSES for i in mapping.values()
        ):
            raise DatasetError(f"class index file {class_index_file} must be a JSON object {{wnid: index in 0..999}}")
        missing = sorted(wnids - mapping.keys())
        if missing:
            raise DatasetError(f"wnids of {source} missing from {class_index_file}: {_shorten(missing)}")
        return mapping
    if len(wnids) != IMAGENET_CLASSES:
        raise DatasetError(
            f"{source} names {len(wnids)} wnids, not all {IMAGENET_CLASSES}, so their ImageNet class indices are "
            "unknown; pass class_index_file (a JSON file {wnid: torchvision class index})"
        )
    return {wnid: i for i, wnid in enumerate(sorted(wnids))}


def _parse_labels(labels_file: Path) -> tuple[dict[str, str] | list[str], set[str]]:
    """The labels file as {image stem: label token} or, for one token a line, the list of label tokens."""
    try:
        lines = [line.split() for line in labels_file.read_text().splitlines() if line.strip()]
    except OSError as err:
        raise DatasetError(f"cannot read labels file {labels_file}: {err}") from None
    widths = {len(tokens) for tokens in lines}
    if not lines or not widths <= {1, 2} or len(widths) != 1:
        raise DatasetError(
            f"labels file {labels_file} must hold one line per image, all '<filename> <label>' or all '<label>'"
        )
    tokens = [t[-1] for t in lines]
    wnids = {t for t in tokens if WNID.fullmatch(t)}
    if widths == {1}:
        return tokens, wnids
    return {Path(name).stem: label for name, label in lines}, wnids


class ImageNetValDataset(_ImageFiles):
    """The ImageNet-1k validation set, labelled with torchvision's class indices; ids are file stems.

    torchvision's class index ``i`` is the ``i``-th of the 1000 WordNet ids (wnids) in sorted order. Layouts:

    - class folders named by wnid (``root/n01440764/ILSVRC2012_val_00000293.JPEG``): with all 1000 folders present
      the index is the folder's sorted position; with fewer, pass ``class_index_file``, a JSON file
      ``{wnid: index}`` (e.g. written from ``torchvision.datasets.ImageNet(...).wnid_to_idx``), since the index of
      a wnid cannot be known from a subset. Anything else raises ``DatasetError``.
    - flat files (``root/ILSVRC2012_val_00000001.JPEG``) with ``labels_file``: one line per image, either
      ``<filename> <label>`` (filename with or without extension; extra lines for absent images are ignored) or
      just ``<label>`` for every image in sorted filename order. A label is a torchvision index 0..999 or a wnid
      (wnids are resolved like folders: all 1000 in the file, or ``class_index_file``). The devkit's
      ``ILSVRC2012_validation_ground_truth.txt`` holds devkit ids 1..1000 in another order: it is NOT accepted.

    ``boxes_dir``: a folder of ILSVRC XML annotations ``<image stem>.xml``. The mask is the union of all objects'
    boxes (box edges in pixels: ``xmin <= x < xmax``), scaled if the XML size differs from the image's, and
    transformed with the image. Every image must have its XML (masks are all or none).
    """

    num_classes = IMAGENET_CLASSES

    def __init__(
        self,
        root: str | os.PathLike,
        preprocessing: Preprocessing,
        labels_file: str | os.PathLike | None = None,
        boxes_dir: str | os.PathLike | None = None,
        class_index_file: str | os.PathLike | None = None,
    ):
        root = Path(root).expanduser()
        if labels_file is None:
            items = self._from_folders(root, class_index_file)
        else:
            items = self._from_labels(root, Path(labels_file).expanduser(), class_index_file)
        super().__init__(items, preprocessing)
        self.boxes_dir = None if boxes_dir is None else Path(boxes_dir).expanduser()
        self.has_masks = self.boxes_dir is not None
        if self.boxes_dir is not None:
            missing = [str(self._xml(i)) for i in range(len(items)) if not self._xml(i).is_file()]
            if missing:
                raise DatasetError(
                    f"{len(missing)} images have no box annotation in {self.boxes_dir} (masks must cover every "
                    f"image): {_shorten(missing, 5)}"
                )

    @staticmethod
    def _from_folders(root: Path, class_index_file: str | os.PathLike | None) -> list[tuple[Path, int, str]]:
        folders = class_folders(root)
        if not folders:
            raise DatasetError(
                f"no class folders in {root}; use root/<wnid>/<images>, or flat images with dataset.labels_file"
            )
        not_wnids = [name for name in folders if not WNID.fullmatch(name)]
        if not_wnids:
            raise DatasetError(f"class folders of {root} must be named by wnid (n01440764, ...): {_shorten(not_wnids)}")
        index = _wnid_to_index(set(folders), class_index_file, f"the class folders of {root}")
        return [(path, label, path.stem) for path, label, _ in _folder_items(root, {w: index[w] for w in folders})]

    @staticmethod
    def _from_labels(
        root: Path, labels_file: Path, class_index_file: str | os.PathLike | None
    ) -> list[tuple[Path, int, str]]:
        if not root.is_dir():
            raise DatasetError(f"dataset folder {root} does not exist")
        paths = sorted(
            (e.path for e in os.scandir(root) if e.is_file() and has_file_allowed_extension(e.name, IMG_EXTENSIONS)),
            key=os.path.basename,
        )
        if not paths:
            raise DatasetError(f"no image files directly in {root} (with a labels file the images must be flat)")
        stems = [Path(p).stem for p in paths]
        if len(set(stems)) != len(stems):
            raise DatasetError(f"{root} holds several images with the same name but different extensions")
        labels, wnids = _parse_labels(labels_file)
        if isinstance(labels, list):
            if len(labels) != len(paths):
                raise DatasetError(
                    f"labels file {labels_file} has {len(labels)} labels (one a line, in sorted filename order) but "
                    f"{root} has {len(paths)} images; use '<filename> <label>' lines for a subset"
                )
            labels = dict(zip(stems, labels, strict=True))
        missing = [p for p, s in zip(paths, stems, strict=True) if s not in labels]
        if missing:
            raise DatasetError(f"{len(missing)} images have no line in labels file {labels_file}: {_shorten(missing)}")
        index = _wnid_to_index(wnids, class_index_file, f"labels file {labels_file}") if wnids else {}
        items = []
        for path, stem in zip(paths, stems, strict=True):
            token = labels[stem]
            label = index[token] if token in index else int(token) if token.isdigit() else -1
            if not 0 <= label < IMAGENET_CLASSES:
                raise DatasetError(
                    f"label {token!r} of {stem} in {labels_file} is neither a torchvision class index 0..999 nor a "
                    "wnid (the devkit's ground truth uses ids 1..1000 in another order: convert it to indices or wnids)"
                )
            items.append((Path(path), label, stem))
        return items

    def _xml(self, index: int) -> Path:
        return self.boxes_dir / f"{self.items[index][2]}.xml"

    def _mask(self, index: int, image: Image.Image) -> tv_tensors.Mask | None:
        if self.boxes_dir is None:
            return None
        path = self._xml(index)
        try:
            tree = ET.parse(path)
            xml_width, xml_height = (float(tree.findtext(f"size/{k}")) for k in ("width", "height"))
            boxes = [
                [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
                for box in tree.iterfind("object/bndbox")
            ]
        except (OSError, ET.ParseError, TypeError, ValueError) as err:
            raise DatasetError(f"cannot read box annotation {path}: {err}") from None
        if not boxes:
            raise DatasetError(f"box annotation {path} has no <object><bndbox>")
        width, height = image.size
        sx, sy = width / xml_width, height / xml_height
        mask = torch.zeros(height, width, dtype=torch.uint8)
        for xmin, ymin, xmax, ymax in boxes:
            x0, x1 = max(round(xmin * sx), 0), min(round(xmax * sx), width)
            y0, y1 = max(round(ymin * sy), 0), min(round(ymax * sy), height)
            mask[y0:y1, x0:x1] = 1
        return tv_tensors.Mask(mask)


class ImagenetteDataset(_ImageFiles):
    """torchvision's ``Imagenette`` (``root/imagenette2-320/val/<wnid>/<image>.JPEG``) with ImageNet-1k labels.

    Its 10 classes are ImageNet classes, mapped by wnid to torchvision's indices; ids are file stems; no masks.
    """

    num_classes = IMAGENET_CLASSES

    def __init__(
        self,
        root: str | os.PathLike,
        preprocessing: Preprocessing,
        split: str = "val",
        size: str = "320px",
        download: bool = False,
    ):
        root = Path(root).expanduser()
        if split not in ("train", "val") or size not in IMAGENETTE_FOLDERS:
            raise DatasetError(f"imagenette split must be train or val and size one of {', '.join(IMAGENETTE_FOLDERS)}")
        folder = root / IMAGENETTE_FOLDERS[size]
        if not download and not folder.is_dir():
            raise DatasetError(
                f"Imagenette not found in {folder}; set dataset.download=true to download it (needs internet)"
            )
        try:
            # loader=str makes the torchvision dataset yield (path, label) without decoding anything
            tv = Imagenette(root, split=split, size=size, download=download, loader=str)
        except (OSError, RuntimeError) as err:
            raise DatasetError(f"cannot load Imagenette {split} from {folder}: {err}") from None
        items = []
        for i in range(len(tv)):
            path, label = tv[i]
            items.append((Path(path), IMAGENETTE_TO_IMAGENET[tv.wnids[label]], Path(path).stem))
        if not items:
            raise DatasetError(f"no Imagenette images in {folder / split}")
        super().__init__(items, preprocessing)
