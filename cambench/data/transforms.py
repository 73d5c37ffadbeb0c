"""Model preprocessing for image files: torchvision's ``ImageClassification`` with an aligned ground-truth mask.

The image goes through resize (shorter side) -> centre crop -> float in [0, 1] -> normalise, exactly as
``weights.transforms()`` does; the mask goes through the same resize and crop with nearest interpolation.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from cambench.data.preprocessing import Preprocessing


class PairTransform:
    """Callable ``(image, mask or None) -> (image (3, H, W) float, mask (H, W) bool or None)``.

    ``image`` is a PIL image of any mode (converted to RGB); ``mask`` is a PIL image (non-zero = inside) or a
    ``tv_tensors.Mask`` of shape (H, W) at the image's size. A class rather than a closure so DataLoader workers
    can pickle it.
    """

    def __init__(self, p: Preprocessing):
        self.ops = v2.Compose(
            [
                v2.Resize(p.resize_size, interpolation=InterpolationMode(p.interpolation), antialias=True),
                v2.CenterCrop(p.crop_size),
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(list(p.mean), list(p.std)),
            ]
        )

    def __call__(
        self, image: Image.Image, mask: Image.Image | tv_tensors.Mask | None = None
    ) -> tuple[Tensor, Tensor | None]:
        image = image.convert("RGB")
        if mask is None:
            return self.ops(image).as_subclass(Tensor), None
        if isinstance(mask, Image.Image):
            mask = tv_tensors.Mask(F.pil_to_tensor(mask.convert("L"))[0])
        out, mask = self.ops(image, mask)  # v2 resizes a Mask with nearest interpolation
        return out.as_subclass(Tensor), mask.as_subclass(Tensor) > 0


def build_transform(p: Preprocessing) -> PairTransform:
    """The transform that turns an image file (and its mask) into what the model with preprocessing ``p`` expects."""
    return PairTransform(p)
