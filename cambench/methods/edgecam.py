"""Edge-CAM, a model-independent sanity baseline: the Sobel edge magnitude of the input image,

    G = 0.299 R + 0.587 G + 0.114 B   (pixels in [0, 1]),   L = sqrt((S_x * G)^2 + (S_y * G)^2)

with 3 x 3 Sobel kernels and reflected borders (as cv2's default), at input resolution.
pytorch-grad-cam's ``sobel_cam`` takes 0.5 |S_x G| + 0.5 |S_y G| on 8-bit images. Saliency
studies with ground truth found popular methods often no better than such an edge detector.
One forward pass (for the prediction only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cambench.methods.base import CAMMethod, Forward, register

LUMA = (0.299, 0.587, 0.114)


def sobel_magnitude(gray: Tensor) -> Tensor:
    """Sobel gradient magnitude of (B, H, W) images, reflected borders."""
    kx = gray.new_tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([kx, kx.T])[:, None]  # (2, 1, 3, 3)
    padded = F.pad(gray[:, None], (1, 1, 1, 1), mode="reflect")
    return F.conv2d(padded, kernels).square().sum(1).sqrt()


@register("edgecam")
class EdgeCAM(CAMMethod):
    paper = "baseline (Sobel edges)"
    summary = "Edge-CAM: Sobel edge magnitude of the image"
    checked = "formula"

    def raw_map(self, fw: Forward) -> Tensor:
        pixels = self.engine.preprocessing.to_pixels(fw.images.float())
        gray = torch.einsum("c,bchw->bhw", pixels.new_tensor(LUMA), pixels)
        return sobel_magnitude(gray)
