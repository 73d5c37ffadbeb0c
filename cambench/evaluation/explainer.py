"""An explainer of an evaluation: a method with its own metric instances, and its work on one batch.

The method of a run and each sanity baseline are explainers; they see the same images and explain
the same classes (the first explainer's). :meth:`Explainer.step` makes the maps of a batch, scores
them with every metric, times both (synchronised on CUDA) and returns a :class:`Step`: the method's
output, the per-image scores and the per-image rows (id, label, prediction, target, whether the map
is constant, every score, the seconds of the method and of each metric per image, the declared
passes and the peak memory). What happens to the rows (files, a progress bar, a checkpoint) is up to
the observers of :func:`cambench.evaluation.loop.evaluate`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from cambench.analysis.statistics import summarise
from cambench.data.base import Batch
from cambench.evaluation.memory import PeakMemory
from cambench.methods import CAMMethod, CAMOutput
from cambench.metrics import Metric, MetricInput
from cambench.models.engine import Passes


def timed(device: torch.device, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and its wall time in seconds (CUDA work included)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


@dataclass
class Step:
    """One explainer's work on one batch."""

    output: CAMOutput  # maps (B, H, W), raw maps, logits, targets, declared passes
    scores: dict[str, Tensor]  # per-image (B,) values of every metric column, on the CPU
    rows: list[dict[str, Any]]  # the per-image rows


@dataclass
class Explainer:
    """A method with its own metric instances: the run's method or a sanity baseline."""

    name: str
    method: CAMMethod
    metrics: dict[str, Metric]
    memory: PeakMemory = field(default_factory=PeakMemory)

    def step(self, batch: Batch, targets: Tensor | None, device: torch.device) -> Step:
        """Maps and scores of ``batch`` (on ``device``) for ``targets`` (None: the predictions), timed."""
        self.memory.reset(device)
        out, seconds = timed(device, self.method.explain, batch.images, targets, batch.ids)
        costs = {"seconds_method": seconds}
        inputs = MetricInput.of(
            out, batch.images, batch.ids, labels=batch.labels, masks=batch.masks, distractors=batch.distractors
        )
        scores: dict[str, Tensor] = {}
        for name, metric in self.metrics.items():
            values, seconds = timed(device, metric.update, inputs)
            scores |= {k: v.detach().cpu() for k, v in values.items()}
            costs[f"seconds_{name}"] = seconds
        n = len(batch.ids)
        per_image = {k: v / n for k, v in costs.items()}
        per_image |= {f"passes_{k}": v for k, v in vars(out.passes).items()}
        per_image["peak_memory_mb"] = self.memory.peak_mb(device)
        return Step(out, scores, rows(batch, out, scores, per_image))

    def state(self) -> dict[str, dict[str, Any]]:
        """Its metrics' running state, for the checkpoint."""
        return {name: metric.state() for name, metric in self.metrics.items()}

    def load_state(self, state: dict[str, dict[str, Any]]) -> None:
        for name, metric in self.metrics.items():
            if name in state:
                metric.load_state(state[name])

    def curves(self) -> pd.DataFrame | None:
        """The metrics' mean curves in long form: explainer, curve, x, mean (a row per point); None without any."""
        frames = [
            pd.DataFrame({"explainer": self.name, "curve": name, "x": x.tolist(), "mean": y.tolist()})
            for metric in self.metrics.values()
            for name, (x, y) in metric.curves().items()
        ]
        return pd.concat(frames, ignore_index=True) if frames else None

    def summary(self, rows: pd.DataFrame, resamples: int, seed: int) -> pd.DataFrame:
        """Scores (then values derived from their means), then costs: n, mean, sd, 95% interval."""
        names = [name for m in self.metrics.values() for name in m.names]
        derived = {name: fn for m in self.metrics.values() for name, fn in m.derived.items()}
        costs = ["seconds_method", *(f"seconds_{name}" for name in self.metrics), *Passes.columns(), "peak_memory_mb"]
        parts = [summarise(rows, names, resamples, seed, derived), summarise(rows, costs, resamples, seed)]
        return pd.concat(parts, ignore_index=True)


def rows(batch: Batch, out: CAMOutput, scores: dict[str, Tensor], costs: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-image rows of a batch: identity, classes, whether the map is constant, scores, then ``costs``."""
    columns = {
        "id": list(batch.ids),
        "label": batch.labels.cpu().tolist(),
        "prediction": out.logits.argmax(1).cpu().tolist(),
        "target": out.targets.cpu().tolist(),
        "constant_map": out.constant.cpu().tolist(),
    }
    columns |= {name: v.tolist() for name, v in scores.items()}
    table = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    return [row | costs for row in table]
