"""Tests of the file-based datasets and their preprocessing, on tiny images written into tmp_path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.datasets import Imagenette
from torchvision.models import ResNet50_Weights
from torchvision.transforms.v2 import functional as F

from cambench.data.base import IMAGENET_MEAN, IMAGENET_STD, collate
from cambench.data.files import (
    IMAGENETTE_TO_IMAGENET,
    DatasetError,
    FolderDataset,
    ImagenetteDataset,
    ImageNetValDataset,
    load_image,
)
from cambench.data.preprocessing import Preprocessing
from cambench.data.transforms import build_transform

SMALL = Preprocessing(resize_size=32, crop_size=32)


def write_image(path: Path, size: tuple[int, int] = (32, 32), color: tuple[int, int, int] = (255, 0, 0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def random_image(width: int, height: int, mode: str = "RGB") -> Image.Image:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    return F.to_pil_image(pixels).convert(mode)


def unnormalise(image: torch.Tensor) -> torch.Tensor:
    return image * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK", "RGBA"])
def test_transform_matches_torchvision_weights_transforms(mode: str) -> None:
    weights = ResNet50_Weights.IMAGENET1K_V2  # builds the transform only; downloads nothing
    image = random_image(300, 260, mode)
    expected = weights.transforms()(image.convert("RGB"))
    got, mask = build_transform(Preprocessing.from_weights(weights))(image, None)
    assert mask is None
    assert type(got) is torch.Tensor and got.shape == (3, 224, 224)
    assert (got - expected).abs().max() < 1e-5


def test_transform_keeps_mask_aligned_with_crop() -> None:
    # 96x64 -> resize the shorter side to 32 -> 48x32 -> the centre crop keeps resized x in [8, 40), i.e. original
    # x in [16, 80); a mask on original x < 48 (resized x < 24) covers crop columns 0..15
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (0, 0, 48, 64))
    image, out = build_transform(SMALL)(random_image(96, 64), mask)
    assert image.shape == (3, 32, 32) and out.dtype == torch.bool and out.shape == (32, 32)
    assert out[:, :16].all() and not out[:, 16:].any()


def test_folder_dataset_labels_ids_and_pixels(tmp_path: Path) -> None:
    write_image(tmp_path / "dog" / "b.png", color=(0, 0, 255))
    write_image(tmp_path / "cat" / "a.jpg")
    write_image(tmp_path / "cat" / "sub" / "c.jpeg")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    ds = FolderDataset(tmp_path, SMALL)
    assert ds.num_classes == 2 and not ds.has_masks
    samples = [ds[i] for i in range(len(ds))]
    assert [(s.id, s.label) for s in samples] == [("cat/a.jpg", 0), ("cat/sub/c.jpeg", 0), ("dog/b.png", 1)]
    assert all(s.mask is None for s in samples)
    blue = unnormalise(samples[2].image).mean(dim=(1, 2))
    assert torch.allclose(blue, torch.tensor([0.0, 0.0, 1.0]), atol=1e-5)
    batch = collate(samples)
    assert batch.images.shape == (3, 3, 32, 32) and batch.labels.tolist() == [0, 0, 1] and batch.masks is None


def test_folder_dataset_class_map(tmp_path: Path) -> None:
    write_image(tmp_path / "tench" / "a.jpg")
    write_image(tmp_path / "parachute" / "b.jpg")
    ds = FolderDataset(tmp_path, SMALL, class_map={"tench": 0, "parachute": 701, "unused": 5})
    assert ds.num_classes == 1000
    assert [(ds[i].id, ds[i].label) for i in range(2)] == [("parachute/b.jpg", 701), ("tench/a.jpg", 0)]
    assert FolderDataset(tmp_path, SMALL, num_classes=10).num_classes == 10
    with pytest.raises(DatasetError, match="missing from the class map: tench"):
        FolderDataset(tmp_path, SMALL, class_map={"parachute": 701})
    with pytest.raises(DatasetError, match="parachute=701"):
        FolderDataset(tmp_path, SMALL, class_map={"tench": 0, "parachute": 701}, num_classes=10)


def test_folder_dataset_empty_roots(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"no class folders in {re.escape(str(tmp_path))}"):
        FolderDataset(tmp_path, SMALL)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match=f"no image files .* of {re.escape(str(tmp_path))}"):
        FolderDataset(tmp_path, SMALL)
    with pytest.raises(DatasetError, match="does not exist"):
        FolderDataset(tmp_path / "missing", SMALL)


def test_unreadable_images_name_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "cat" / "x.jpg"
    garbage.parent.mkdir()
    garbage.write_bytes(b"this is not a jpeg" * 10)
    data = (write_image(tmp_path / "full.jpg", (64, 64))).read_bytes()
    truncated = tmp_path / "dog" / "t.jpg"
    truncated.parent.mkdir()
    truncated.write_bytes(data[: len(data) // 2])
    ds = FolderDataset(tmp_path, SMALL)
    for index, path in enumerate([garbage, truncated]):
        with pytest.raises(DatasetError, match="cannot read image") as err:
            ds[index]
        assert str(path) in str(err.value) and "Remove or replace" in str(err.value)
    assert load_image(tmp_path / "full.jpg").size == (64, 64)


def wnid(i: int) -> str:
    return f"n{i:08d}"


def test_imagenet_folders_need_all_wnids_or_an_index_file(tmp_path: Path) -> None:
    root = tmp_path / "val"
    for i in range(1000):
        (root / wnid(i * 7)).mkdir(parents=True)
    write_image(root / wnid(0) / "ILSVRC2012_val_00000002.JPEG")
    write_image(root / wnid(6993) / "ILSVRC2012_val_00000001.JPEG")
    ds = ImageNetValDataset(root, SMALL)
    assert ds.num_classes == 1000 and not ds.has_masks
    assert [(s.id, s.label) for s in ds] == [("ILSVRC2012_val_00000002", 0), ("ILSVRC2012_val_00000001", 999)]

    subset = tmp_path / "subset"
    write_image(subset / wnid(7) / "a.JPEG")
    with pytest.raises(DatasetError, match=r"names 1 wnids, not all 1000.*class_index_file"):
        ImageNetValDataset(subset, SMALL)
    index_file = tmp_path / "index.json"
    index_file.write_text(json.dumps({wnid(7): 1}))
    assert ImageNetValDataset(subset, SMALL, class_index_file=index_file)[0].label == 1
    index_file.write_text(json.dumps({wnid(8): 1}))
    with pytest.raises(DatasetError, match=f"missing from .*index.json: {wnid(7)}"):
        ImageNetValDataset(subset, SMALL, class_index_file=index_file)
    write_image(subset / "cats" / "b.jpg")
    with pytest.raises(DatasetError, match=r"must be named by wnid.*cats"):
        ImageNetValDataset(subset, SMALL, class_index_file=index_file)


def flat_val(root: Path, count: int = 3) -> list[str]:
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, count + 1)]
    for name in names:
        write_image(root / name)
    return names


def test_imagenet_flat_labels_file_formats(tmp_path: Path) -> None:
    root = tmp_path / "val"
    names = flat_val(root)
    labels = tmp_path / "labels.txt"
    labels.write_text("65\n970\n0\n")
    ds = ImageNetValDataset(root, SMALL, labels_file=labels)
    assert [(ds[i].id, ds[i].label) for i in range(3)] == [
        ("ILSVRC2012_val_00000001", 65),
        ("ILSVRC2012_val_00000002", 970),
        ("ILSVRC2012_val_00000003", 0),
    ]
    labels.write_text(f"{names[2]} 3\nILSVRC2012_val_00000001 1\nILSVRC2012_val_00000099 5\n{names[1]} 2\n")
    assert [s.label for s in ImageNetValDataset(root, SMALL, labels_file=labels)] == [1, 2, 3]

    index_file = tmp_path / "index.json"
    index_file.write_text(json.dumps({"n01440764": 0, "n03888257": 701}))
    labels.write_text(f"{names[0]} n03888257\n{names[1]} n01440764\n{names[2]} 5\n")
    ds = ImageNetValDataset(root, SMALL, labels_file=labels, class_index_file=index_file)
    assert [s.label for s in ds] == [701, 0, 5]
    with pytest.raises(DatasetError, match=r"names 2 wnids, not all 1000"):
        ImageNetValDataset(root, SMALL, labels_file=labels)


def test_imagenet_flat_labels_errors(tmp_path: Path) -> None:
    root = tmp_path / "val"
    names = flat_val(root)
    labels = tmp_path / "labels.txt"
    labels.write_text(f"{names[0]} 1\n{names[1]} 2\n")
    with pytest.raises(DatasetError, match=f"1 images have no line in labels file .*{names[2]}"):
        ImageNetValDataset(root, SMALL, labels_file=labels)
    labels.write_text("1\n2\n")
    with pytest.raises(DatasetError, match=r"has 2 labels .* has 3 images"):
        ImageNetValDataset(root, SMALL, labels_file=labels)
    labels.write_text("1\n2\n1000\n")
    with pytest.raises(DatasetError, match=r"label '1000' of ILSVRC2012_val_00000003 .* devkit"):
        ImageNetValDataset(root, SMALL, labels_file=labels)
    labels.write_text(f"{names[0]} 1 extra\n")
    with pytest.raises(DatasetError, match="one line per image"):
        ImageNetValDataset(root, SMALL, labels_file=labels)


def write_xml(path: Path, size: tuple[int, int], boxes: list[tuple[int, int, int, int]]) -> None:
    objects = "".join(
        f"<object><name>n01440764</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
        f"<ymax>{y1}</ymax></bndbox></object>"
        for x0, y0, x1, y1 in boxes
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
        f"{objects}</annotation>"
    )


def test_imagenet_boxes_become_aligned_masks(tmp_path: Path) -> None:
    root, boxes = tmp_path / "val", tmp_path / "boxes"
    names = flat_val(root, 2)
    write_image(root / names[0], (64, 64))
    write_image(root / names[1], (64, 64))
    labels = tmp_path / "labels.txt"
    labels.write_text("0\n1\n")
    write_xml(boxes / "ILSVRC2012_val_00000001.xml", (64, 64), [(0, 0, 32, 64)])  # left half
    # the XML says 128x128 (scaled by 1/2): a top-left and a bottom-right quarter, unioned
    write_xml(boxes / "ILSVRC2012_val_00000002.xml", (128, 128), [(0, 0, 64, 64), (64, 64, 128, 128)])
    ds = ImageNetValDataset(root, SMALL, labels_file=labels, boxes_dir=boxes)
    assert ds.has_masks
    left, quarters = ds[0].mask, ds[1].mask
    assert left.dtype == torch.bool and left.shape == (32, 32)
    assert left[:, :16].all() and not left[:, 16:].any()
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[:16, :16] = expected[16:, 16:] = True
    assert torch.equal(quarters, expected)
    assert collate([ds[0], ds[1]]).masks.shape == (2, 32, 32)


def test_imagenet_boxes_must_cover_every_image(tmp_path: Path) -> None:
    root, boxes = tmp_path / "val", tmp_path / "boxes"
    flat_val(root, 2)
    labels = tmp_path / "labels.txt"
    labels.write_text("0\n1\n")
    write_xml(boxes / "ILSVRC2012_val_00000001.xml", (32, 32), [(0, 0, 8, 8)])
    missing = re.escape(str(boxes / "ILSVRC2012_val_00000002.xml"))
    with pytest.raises(DatasetError, match=f"1 images have no box annotation .*{missing}"):
        ImageNetValDataset(root, SMALL, labels_file=labels, boxes_dir=boxes)
    (boxes / "ILSVRC2012_val_00000002.xml").write_text("<annotation><size>")
    ds = ImageNetValDataset(root, SMALL, labels_file=labels, boxes_dir=boxes)
    with pytest.raises(DatasetError, match=r"cannot read box annotation .*ILSVRC2012_val_00000002.xml"):
        ds[1]


def test_imagenette_maps_wnids_to_imagenet_indices(tmp_path: Path) -> None:
    categories = ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    # torchvision's wnid -> names table is private; it is what its Imagenette labels folders with
    assert IMAGENETTE_TO_IMAGENET.keys() == Imagenette._WNID_TO_CLASS.keys()
    for wnid_, index in IMAGENETTE_TO_IMAGENET.items():
        assert categories[index] == Imagenette._WNID_TO_CLASS[wnid_][0]

    folder = re.escape(str(tmp_path / "imagenette2-320"))
    with pytest.raises(DatasetError, match=f"not found in {folder}.*download=true"):
        ImagenetteDataset(tmp_path, SMALL)
    write_image(tmp_path / "imagenette2-320" / "val" / "n03888257" / "ILSVRC2012_val_00000003.JPEG")
    write_image(tmp_path / "imagenette2-320" / "val" / "n01440764" / "n01440764_1.JPEG")
    ds = ImagenetteDataset(tmp_path, SMALL)
    assert ds.num_classes == 1000 and not ds.has_masks
    assert [(s.id, s.label, s.mask) for s in ds] == [("n01440764_1", 0, None), ("ILSVRC2012_val_00000003", 701, None)]
    assert ds[0].image.shape == (3, 32, 32)
    with pytest.raises(DatasetError, match="cannot load Imagenette train"):
        ImagenetteDataset(tmp_path, SMALL, split="train")
