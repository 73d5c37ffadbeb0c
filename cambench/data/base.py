"""Sample and batch types shared by every dataset, and their collate function."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cambench.errors import CambenchError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise(images: Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:
    """Channel-normalise images in [0, 1], (B, 3, H, W) or (3, H, W)."""
    shape = (3, 1, 1)
    return (images - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


class DatasetError(CambenchError):
    """A dataset that cannot be used as configured; the message says which file or option and what to do."""


@dataclass
class Sample:
    """One dataset item: the model-ready image, its label, a ground-truth mask or None, an id, and
    the mask of the distractors (objects of no class) where the dataset knows them (shapes), else None."""

    image: Tensor  # (3, H, W), normalised as the model expects
    label: int
    mask: Tensor | None  # (H, W) bool, aligned with ``image``
    id: str
    distractors: Tensor | None = None  # (H, W) bool, disjoint from ``mask``


@dataclass
class Batch:
    images: Tensor
    labels: Tensor
    masks: Tensor | None
    ids: list[str]
    distractors: Tensor | None = None  # (B, H, W) bool

    def to(self, device: torch.device | str, memory_format: torch.memory_format = torch.preserve_format) -> Batch:
        images = self.images.to(device, non_blocking=True, memory_format=memory_format)
        masks, distractors = (_to(m, device) for m in (self.masks, self.distractors))
        return Batch(images, self.labels.to(device), masks, self.ids, distractors)


def _to(masks: Tensor | None, device: torch.device | str) -> Tensor | None:
    return None if masks is None else masks.to(device, non_blocking=True)


def _stack(masks: list[Tensor | None]) -> Tensor | None:
    return None if any(m is None for m in masks) else torch.stack(masks)


def collate(samples: list[Sample]) -> Batch:
    return Batch(
        images=torch.stack([s.image for s in samples]),
        labels=torch.tensor([s.label for s in samples]),
        masks=_stack([s.mask for s in samples]),
        ids=[s.id for s in samples],
        distractors=_stack([s.distractors for s in samples]),
    )
