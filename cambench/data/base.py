"""Sample and batch types shared by every dataset, and their collate function."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise(images: Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:
    """Channel-normalise images in [0, 1], (B, 3, H, W) or (3, H, W)."""
    shape = (3, 1, 1)
    return (images - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


class DatasetError(ValueError):
    """A dataset that cannot be used as configured; the message says which file or option and what to do."""


@dataclass
class Sample:
    """One dataset item: the model-ready image, its label, a ground-truth mask or None, an id."""

    image: Tensor  # (3, H, W), normalised as the model expects
    label: int
    mask: Tensor | None  # (H, W) bool, aligned with ``image``
    id: str


@dataclass
class Batch:
    images: Tensor
    labels: Tensor
    masks: Tensor | None
    ids: list[str]

    def to(self, device: torch.device | str, memory_format: torch.memory_format = torch.preserve_format) -> Batch:
        masks = None if self.masks is None else self.masks.to(device, non_blocking=True)
        images = self.images.to(device, non_blocking=True, memory_format=memory_format)
        return Batch(images, self.labels.to(device), masks, self.ids)


def collate(samples: list[Sample]) -> Batch:
    masks = [s.mask for s in samples]
    return Batch(
        images=torch.stack([s.image for s in samples]),
        labels=torch.tensor([s.label for s in samples]),
        masks=None if any(m is None for m in masks) else torch.stack(masks),
        ids=[s.id for s in samples],
    )
