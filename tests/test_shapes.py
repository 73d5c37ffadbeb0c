"""The shapes dataset: determinism, splits, masks, and class evidence confined to the mask."""

import dataclasses

import pytest
import torch

from cambench.data.base import IMAGENET_MEAN, IMAGENET_STD, DatasetError
from cambench.data.shapes import EXTENT, SHAPE_CLASSES, mask_to_box, render, sample_scenes
from cambench.data.shapes_dataset import ShapesDataset


def test_samples_are_deterministic_and_splits_differ():
    a, b = ShapesDataset("test", 3, 64)[2], ShapesDataset("test", 3, 64)[2]
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask) and a.label == b.label
    assert a.id == "shapes-test-000002"
    train = ShapesDataset("train", 3, 64)[2]
    assert not torch.equal(a.image, train.image)


def test_images_are_normalised_rgb_and_classes_cover_all_shapes():
    data = ShapesDataset("test", 64, 32)
    sample = data[0]
    assert sample.image.shape == (3, 32, 32) and sample.mask.shape == (32, 32) and sample.mask.dtype == torch.bool
    raw = sample.image * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
    assert {data[i].label for i in range(64)} == set(range(len(SHAPE_CLASSES)))


def test_object_masks_are_whole_objects_inside_the_image():
    scenes = sample_scenes(64, torch.Generator().manual_seed(0))
    _, masks = render(scenes, 224)
    area = masks.flatten(1).float().mean(1)
    assert (area > 0.01).all() and (area < 0.5).all()
    # every object lies within EXTENT radii of its centre, and so wholly inside the image
    ys, xs = torch.meshgrid(torch.arange(224.0) + 0.5, torch.arange(224.0) + 0.5, indexing="ij")
    distance = torch.hypot(xs / 224 - scenes.centre[:, 0, None, None], ys / 224 - scenes.centre[:, 1, None, None])
    assert (distance[masks] <= (scenes.radius[:, None, None] * EXTENT).expand_as(masks)[masks]).all()
    border = masks.clone()
    border[:, 1:-1, 1:-1] = False
    assert not border.any()
    # the mask is centred on the object's centre (within the object's radius)
    ys, xs = torch.meshgrid(torch.arange(224.0), torch.arange(224.0), indexing="ij")
    cx = (xs * masks).flatten(1).sum(1) / masks.flatten(1).sum(1) / 224
    cy = (ys * masks).flatten(1).sum(1) / masks.flatten(1).sum(1) / 224
    assert ((cx - scenes.centre[:, 0]).abs() < scenes.radius).all()
    assert ((cy - scenes.centre[:, 1]).abs() < scenes.radius).all()


def test_class_evidence_lies_inside_the_mask():
    """Changing only the label leaves every pixel outside both objects' masks unchanged."""
    scenes = sample_scenes(8, torch.Generator().manual_seed(1))
    relabelled = dataclasses.replace(scenes, label=(scenes.label + 3) % len(SHAPE_CLASSES))
    (img_a, mask_a), (img_b, mask_b) = render(scenes, 96), render(relabelled, 96)
    outside = ~(mask_a | mask_b)
    assert outside.float().mean() > 0.4
    assert torch.equal(img_a.permute(1, 0, 2, 3)[:, outside], img_b.permute(1, 0, 2, 3)[:, outside])
    assert not torch.equal(img_a, img_b)


def test_mask_to_box_is_tight():
    mask = torch.zeros(10, 12, dtype=torch.bool)
    mask[2:5, 3:9] = True
    assert mask_to_box(mask).tolist() == [3, 2, 8, 4]


def test_unknown_split_is_a_dataset_error_with_the_choices():
    with pytest.raises(DatasetError, match=r"unknown dataset\.split 'val'; valid choices: train, test"):
        ShapesDataset("val")
