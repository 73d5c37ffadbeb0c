"""Shared machinery of every CAM method: registry, hooks, batched capture, normalisation.

A method subclasses :class:`CAMMethod` and implements :meth:`CAMMethod.cam`, which turns the
captured activations ``A`` (B, K, h, w) and, for gradient methods, the gradients
``G = d y_c / d A`` into a raw (B, h, w) map. The base does the rest, once, in torch on the
device: one forward pass with the target layer hooked, the target class (prediction or given),
one backward pass that only runs through the layers after the target layer, ReLU, per-image
min-max normalisation, bilinear upsampling to the input size and min-max again (the order
pytorch-grad-cam uses, so maps agree with it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cambench.device import autocast

METHODS: dict[str, type[CAMMethod]] = {}
EPS = 1e-7


def register(name: str) -> Callable[[type[CAMMethod]], type[CAMMethod]]:
    """Class decorator: make a method available under its config name."""

    def add(cls: type[CAMMethod]) -> type[CAMMethod]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = cls
        cls.name = name
        return cls

    return add


@dataclass
class CAMOutput:
    maps: Tensor  # (B, H, W) in [0, 1], input resolution
    logits: Tensor  # (B, num_classes), from the clean forward pass
    targets: Tensor  # (B,) the explained classes


def minmax(maps: Tensor) -> Tensor:
    """Per-map min-max normalisation over the last two dims: (L - min) / (max - min + 1e-7)."""
    flat = maps.flatten(-2)
    lo = flat.amin(-1, keepdim=True)
    flat = flat - lo
    return (flat / (flat.amax(-1, keepdim=True) + EPS)).view_as(maps)


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (B, h, w) maps to ``size`` (align_corners=False, as cv2.resize)."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


class _Capture:
    """Holds the target layer's activation; the hook detaches it so no graph is built before it."""

    def __init__(self, track_gradients: bool):
        self.track_gradients = track_gradients
        self.activation: Tensor | None = None

    def __call__(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
        if not isinstance(output, Tensor):
            raise TypeError(f"target layer {type(module).__name__} returns {type(output).__name__}, not a tensor")
        if not self.track_gradients:
            self.activation = output.detach()
            return None
        # The forward runs under no_grad up to here; from here on autograd records, starting at a
        # fresh leaf, so the backward pass stops at the target layer. The clone keeps that leaf
        # safe from in-place ops that follow (for example a residual ``out += identity``).
        torch.set_grad_enabled(True)
        self.activation = output.detach().requires_grad_(True)
        return self.activation.clone()


@contextmanager
def capture(layer: nn.Module, track_gradients: bool) -> Iterator[_Capture]:
    """Hook ``layer`` for the duration of one forward pass. A module called several times in one
    forward (a shared ReLU) keeps its last call."""
    hook = _Capture(track_gradients)
    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():  # the hook re-enables autograd after the target layer when needed
            yield hook
    finally:
        handle.remove()


class CAMMethod:
    """Base class. Subclasses set ``needs_gradients`` and implement :meth:`cam`."""

    name: str = ""
    needs_gradients: bool = True

    def __init__(self, model: nn.Module, target_layer: nn.Module, autocast_dtype: torch.dtype | None = None):
        self.model = model.eval()
        self.target_layer = target_layer
        self.autocast_dtype = autocast_dtype

    def cam(self, activations: Tensor, gradients: Tensor | None) -> Tensor:
        """Raw (B, h, w) map from activations (B, K, h, w) and gradients of the same shape."""
        raise NotImplementedError

    def _forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        with capture(self.target_layer, self.needs_gradients) as hook, autocast(images.device, self.autocast_dtype):
            logits = self.model(images)
        if hook.activation is None:
            raise RuntimeError("the target layer was not called in the forward pass; choose another model.target_layer")
        return logits, hook.activation

    def __call__(self, images: Tensor, targets: Tensor | None = None) -> CAMOutput:
        logits, activations = self._forward(images)
        if targets is None:
            targets = logits.argmax(1)
        gradients = None
        if self.needs_gradients:
            score = logits.gather(1, targets[:, None]).sum()
            # Only d y_c / d A: no parameter gradients, no layers before the target layer.
            (gradients,) = torch.autograd.grad(score, activations)
            gradients = gradients.float()
        raw = self.cam(activations.detach().float(), gradients)
        # Normalised again after resizing: bilinear interpolation misses interior extremes, and
        # maps must span exactly [0, 1] at input size (pytorch-grad-cam does the same).
        maps = minmax(upsample(minmax(torch.relu(raw)), images.shape[-2:]))
        return CAMOutput(maps=maps, logits=logits.detach().float(), targets=targets)


def build_method(name: str, model: nn.Module, target_layer: nn.Module, **kwargs) -> CAMMethod:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; valid choices: {', '.join(sorted(METHODS))}")
    return METHODS[name](model, target_layer, **kwargs)
