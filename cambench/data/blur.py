"""Gaussian blurs of image batches, as the papers' released code builds them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rise_kernel(size: int, sigma: float, truncate: float = 4.0) -> Tensor:
    """RISE's ``gkern(size, sigma)`` (RISE: 11, 5): scipy's gaussian_filter (mode ``reflect``, its ``truncate``)
    of a size x size delta."""
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    weights /= weights.sum()
    source = torch.arange(size)[:, None] + offsets.long()[None, :]  # index each weight reads, per output
    source %= 2 * size  # scipy's "reflect": d c b a | a b c d | d c b a
    source = torch.where(source >= size, 2 * size - 1 - source, source)
    k = (weights * (source == size // 2)).sum(1)
    return k[:, None] * k[None, :]


def gaussian_blur(images: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Per-channel blur with RISE's kernel (:func:`rise_kernel`) and zero padding, as its substrate function."""
    channels = images.shape[1]
    kernel = rise_kernel(kernel_size, sigma).to(images.dtype).to(images.device)
    weight = kernel.expand(channels, 1, kernel_size, kernel_size)
    return F.conv2d(images, weight, padding=kernel_size // 2, groups=channels)


def sampled_gaussian_blur(images: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """Per-channel blur with a sampled, normalised Gaussian and reflect padding, as kornia's
    ``gaussian_blur2d`` (Group-CAM's substrate: kernel 51, sigma 50). ``kernel_size`` is odd and
    smaller than twice the image side (reflect padding needs ``kernel_size // 2`` < side)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    offsets = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    weights = (weights / weights.sum()).to(images.dtype).to(images.device)
    channels, pad = images.shape[1], kernel_size // 2
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")  # d c b | a b c d | c b a
    rows = F.conv2d(padded, weights.view(1, 1, 1, -1).expand(channels, 1, 1, kernel_size), groups=channels)
    return F.conv2d(rows, weights.view(1, 1, -1, 1).expand(channels, 1, kernel_size, 1), groups=channels)
