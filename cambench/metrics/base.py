"""Shared pieces of the metrics: the model scorer, the per-batch input, the accumulating base."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cambench.device import autocast

METRICS: dict[str, type[Metric]] = {}


def register(name: str) -> Callable[[type[Metric]], type[Metric]]:
    def add(cls: type[Metric]) -> type[Metric]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        METRICS[name] = cls
        return cls

    return add


class Scorer:
    """Softmax probability of given classes under the model, in forward batches of ``batch_size``.

    ``scorer(images, targets)`` returns p(targets[n] | images[n]) for every n, (N,) float32.
    """

    def __init__(self, model: nn.Module, batch_size: int = 256, autocast_dtype: torch.dtype | None = None):
        self.model = model
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype

    @torch.inference_mode()
    def __call__(self, images: Tensor, targets: Tensor) -> Tensor:
        out = []
        for x, t in zip(images.split(self.batch_size), targets.split(self.batch_size), strict=True):
            with autocast(x.device, self.autocast_dtype):
                logits = self.model(x)
            out.append(logits.float().softmax(1).gather(1, t[:, None])[:, 0])
        return torch.cat(out)


@dataclass
class MetricInput:
    """Everything a metric may need about one batch, all on the device."""

    images: Tensor  # (B, C, H, W), model input
    maps: Tensor  # (B, H, W) saliency in [0, 1]
    targets: Tensor  # (B,) explained classes
    labels: Tensor  # (B,)
    masks: Tensor | None  # (B, H, W) bool ground truth
    scorer: Scorer


class Metric:
    """Accumulating wrapper around a functional core (the torchmetrics habit).

    ``update`` scores one batch and returns per-image values (B,) under each name in
    ``names``; ``compute`` returns the running mean of each.
    """

    names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._values: dict[str, list[Tensor]] = {name: [] for name in self.names}

    def score(self, batch: MetricInput) -> dict[str, Tensor]:
        raise NotImplementedError

    def update(self, batch: MetricInput) -> dict[str, Tensor]:
        values = self.score(batch)
        for name in self.names:
            self._values[name].append(values[name].detach())
        return values

    def compute(self) -> dict[str, Tensor]:
        return {name: torch.cat(v).mean() for name, v in self._values.items() if v}


def build_metric(name: str, **params) -> Metric:
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; valid choices: {', '.join(sorted(METRICS))}")
    return METRICS[name](**params)
