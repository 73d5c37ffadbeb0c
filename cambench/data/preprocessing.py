"""What a model expects of its input: torchvision's ``ImageClassification`` parameters, and the map
between pixel space ([0, 1] RGB) and model input (channel-normalised) that metrics and baselines use."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
from torchvision.models import WeightsEnum

from cambench.data.base import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class Preprocessing:
    """Resize, centre crop and channel normalisation of image files for the model."""

    resize_size: int = 256
    crop_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    @classmethod
    def from_weights(cls, weights: WeightsEnum) -> Preprocessing:
        t = weights.transforms()
        return cls(t.resize_size[0], t.crop_size[0], tuple(t.mean), tuple(t.std), t.interpolation.value)

    def _stats(self, images: Tensor) -> tuple[Tensor, Tensor]:
        shape = (len(self.mean), 1, 1)
        mean = images.new_tensor(self.mean).view(shape)
        return mean, images.new_tensor(self.std).view(shape)

    def to_pixels(self, images: Tensor) -> Tensor:
        """Model input (B, 3, H, W) -> RGB pixels in [0, 1] (not clamped)."""
        mean, std = self._stats(images)
        return images * std + mean

    def from_pixels(self, pixels: Tensor) -> Tensor:
        """RGB pixels in [0, 1] -> model input."""
        mean, std = self._stats(pixels)
        return (pixels - mean) / std
