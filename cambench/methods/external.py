"""Maps from any other tool, as a method: ``FunctionMethod(fn, model)`` with ``fn(images, targets) -> maps``.

The metrics that need maps of new inputs or classes (ADCC's coherency, sensitivity, class sensitivity)
call the method that made the maps again; this wraps any callable for them, so maps of pytorch-grad-cam,
Captum or one's own code are scored as cambench's own are. ``fn`` gets the model input (B, C, H, W) and
the explained classes (B,) and returns maps (B, h, w) or (B, 1, h, w), a tensor or a numpy array at any
resolution; they are normalised as any method's raw map (ReLU, min-max, bilinear resize to the input,
min-max again), so maps already in [0, 1] at input size stay as they are. A pytorch-grad-cam object,
for example::

    FunctionMethod(lambda x, t: gradcam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in t.tolist()]),
                   model)

The wrapper runs the model once per call for the logits and the predicted classes (``targets=None``):
cost 1F plus whatever ``fn`` costs. It is not registered (no config names it): the Python API uses it
(``cambench.score(..., explainer=fn)``). Model randomisation rebuilds the method on a randomised copy of
the model, which a callable bound to the original model cannot follow: it needs a cambench method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cambench.methods.base import CAMMethod, Forward, MethodError
from cambench.models.engine import Engine, Passes

MapFunction = Callable[[Tensor, Tensor], Any]


class FunctionMethod(CAMMethod):
    name = "function"
    paper = "maps of another tool"
    summary = "the maps of fn(images, targets)"
    checked = "pytorch-grad-cam's Grad-CAM scores as cambench's"
    cost = "1F + fn"

    def __init__(self, fn: MapFunction, model: nn.Module | Engine, **options: Any):
        """``fn`` on ``model`` (the model is not split: no target layer); ``options`` as :class:`CAMMethod`'s."""
        if not callable(fn):
            raise MethodError(
                f"an explainer must be a cambench method or a callable (images, targets) -> maps, got {fn!r}"
            )
        self.fn = fn
        super().__init__(model, [] if not isinstance(model, Engine) else None, **options)

    def passes(self, channels: int, positions: int) -> Passes:
        return Passes(forward=1)

    def raw_map(self, fw: Forward) -> Tensor:
        return as_maps(self.fn(fw.images, fw.targets), len(fw.images), fw.images.device)


def as_maps(maps: Any, count: int, device: torch.device) -> Tensor:
    """(B, h, w) float32 maps on ``device`` from a tensor or array of shape (B, h, w) or (B, 1, h, w)."""
    if isinstance(maps, np.ndarray):
        maps = torch.from_numpy(np.ascontiguousarray(maps))
    if not isinstance(maps, Tensor):
        raise MethodError(f"maps must be a tensor or a numpy array (B, h, w), got {type(maps).__name__}")
    maps = maps.detach()
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 3 or len(maps) != count:
        raise MethodError(f"maps must be one (h, w) map per image, (B, h, w) with B = {count}, got {tuple(maps.shape)}")
    if maps.is_complex() or not (maps.is_floating_point() or maps.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise MethodError(f"maps must be real numbers, got {maps.dtype}")
    return maps.to(device=device, dtype=torch.float32)
