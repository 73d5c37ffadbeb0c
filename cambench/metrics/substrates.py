"""What perturbation metrics put in place of the pixels they remove, in model input space.

- ``zeros``: 0 in the normalised space, i.e. the dataset's mean colour (RISE's deletion substrate).
- ``black``: RGB 0 through the model's preprocessing (Poppi et al.'s substrate, Quantus's FC).
- ``mean``: each image's own mean colour, per channel.
- ``blur``: the image blurred with RISE's kernel (:func:`cambench.data.blur.gaussian_blur`;
  RISE's insertion substrate: kernel 11, sigma 5).
- ``uniform``: seeded uniform noise in [0, 1] pixels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cambench.data.blur import gaussian_blur
from cambench.data.preprocessing import Preprocessing

SUBSTRATES = ("zeros", "black", "mean", "blur", "uniform")


def substrate(
    name: str,
    images: Tensor,
    preprocessing: Preprocessing,
    generator: torch.Generator | None = None,
    blur_kernel: int | None = None,
    blur_sigma: float | None = None,
) -> Tensor:
    """The substrate ``name`` (B, C, H, W) for ``images`` (B, C, H, W), model input; ``uniform`` draws from
    ``generator``, ``blur`` takes the kernel size and sigma of the metric's parameters."""
    if name == "zeros":
        return torch.zeros_like(images)
    if name == "black":
        return preprocessing.from_pixels(torch.zeros_like(images))
    if name == "mean":
        return images.mean((2, 3), keepdim=True).expand_as(images)
    if name == "blur":
        if blur_kernel is None or blur_sigma is None:
            raise ValueError("the blur substrate needs blur_kernel and blur_sigma")
        return gaussian_blur(images, blur_kernel, blur_sigma)
    if name == "uniform":
        noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        return preprocessing.from_pixels(noise)
    raise ValueError(f"unknown substrate {name!r}; valid choices: {', '.join(SUBSTRATES)}")
