"""Shared pieces of the metrics: the run context, the per-batch input, the accumulating base.

A metric is a functional core (batched tensors in, one score per image out, on the device)
wrapped by a small class that accumulates per-image values (the torchmetrics habit). The class
is built once per run with a :class:`MetricContext`: the model split at its target layers, the
method itself (a metric may recompute maps), the scorer, the preprocessing (pixel space <->
model input) and the run's seed. A metric declares what it needs in ``requires`` (for example
``"masks"``: ground-truth masks from the dataset, ``"new_maps"``: the method's maps of other
inputs or classes); the run fails at start when the dataset or the method cannot give it.

A metric's random draws come from a generator of its own, reseeded per batch from the run's seed
and the batch index (:class:`cambench.models.engine.Stream`). What a metric accumulates over the
batches besides its per-image values (the mean curves) is named in ``accumulators``: the runner
saves it after every batch, so that a resumed run goes on from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from cambench import params
from cambench.data.preprocessing import Preprocessing
from cambench.errors import CambenchError
from cambench.methods.base import CAMMethod, CAMOutput
from cambench.models.engine import Engine, Stream
from cambench.models.scorer import Scorer

METRICS: dict[str, type[Metric]] = {}
CAPABILITIES = {
    "model": "the model (give model= to cambench.score)",
    "masks": "ground-truth masks (dataset=shapes, or dataset=imagenet with dataset.boxes_dir)",
    "gradients": "a gradient-based method",
    "distractors": "distractor masks (dataset=shapes)",
    "grid": "grid mosaics (dataset.grid=2, on any dataset)",
    "new_maps": "a method that makes maps of new inputs or classes (method=saved only looks stored maps up)",
}


class MetricError(CambenchError):
    """A metric that cannot run as configured (its parameters, or what the run can give it)."""


def register(name: str) -> Callable[[type[Metric]], type[Metric]]:
    def add(cls: type[Metric]) -> type[Metric]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        METRICS[name] = cls
        cls.name = name
        return cls

    return add


@dataclass
class MetricContext:
    """Everything a metric may use besides the batch, built once per run: the engine (the model split at its
    target layers, the scorer, the preprocessing, the seed) and the method that made the maps, which a metric
    may ask for maps of new inputs or classes. A metric that only reads maps needs neither."""

    engine: Engine
    method: CAMMethod | None = None

    @property
    def model(self) -> nn.Module:
        return self.engine.model

    @property
    def scorer(self) -> Scorer:
        return self.engine.scorer

    @property
    def preprocessing(self) -> Preprocessing:
        return self.engine.preprocessing

    def generator(self, device: torch.device) -> torch.Generator:
        """A fresh generator seeded with the run's seed: what every metric draws from on the first batch
        (its own stream, :meth:`Metric.generator`, is reseeded per batch)."""
        return self.engine.generator(device)


@dataclass
class MetricInput:
    """One batch, all on the device: the data and the maps to score."""

    images: Tensor | None  # (B, C, H, W), model input (None where no metric needs the images)
    maps: Tensor  # (B, H, W) in [0, 1], input resolution
    targets: Tensor  # (B,) the explained classes
    logits: Tensor | None = None  # (B, classes) float32 of the clean images (None without a model)
    ids: Sequence[str] = ()
    labels: Tensor | None = None  # (B,)
    masks: Tensor | None = None  # (B, H, W) bool ground truth
    distractors: Tensor | None = None  # (B, H, W) bool, objects of no class (shapes), disjoint from masks

    @classmethod
    def of(cls, cam: CAMOutput, images: Tensor, ids: Sequence[str], **data: Tensor | None) -> MetricInput:
        """The input of a method's output ``cam`` on ``images`` (``data``: labels, masks, distractors)."""
        return cls(images, cam.maps, cam.targets, cam.logits, ids, **data)


class Metric:
    """Accumulating wrapper around a functional core.

    ``update`` scores one batch and returns per-image values (B,) under each name in ``names``;
    ``compute`` returns the running mean of each, and of each ``derived`` value: a function of
    the means of the columns (an aggregate that is not a mean of per-image values, such as ADCC of
    the dataset means; the summary bootstraps it from the same resamples).
    """

    name: ClassVar[str] = ""
    names: ClassVar[tuple[str, ...]] = ()
    derived: ClassVar[dict[str, Callable[[dict[str, Tensor]], Tensor]]] = {}
    lower_is_better: ClassVar[frozenset[str]] = frozenset()  # of names and derived; the others: higher is better
    # keys of CAPABILITIES; most metrics run the model (a metric that only reads maps and masks requires none)
    requires: ClassVar[frozenset[str]] = frozenset({"model"})
    # sanity checks: column -> the mean at or past which (by the column's direction) the explainer fails
    # the check; the summary's flag column says so
    fails_at: ClassVar[dict[str, float]] = {}
    accumulators: ClassVar[tuple[str, ...]] = ()  # attributes holding running state (besides the per-image values)

    @dataclass
    class Params(params.Params):
        """The metric's hyper-parameters (none here): a subclass declares its own."""

    def __init__(self, ctx: MetricContext | None = None, **hyper: Any):
        """The metric with its hyper-parameters ``hyper`` (``Params``); ``ctx``: the engine and the method,
        for the metrics that need them (``requires``)."""
        self.params = params.validate(type(self).Params, hyper, f"metric {self.name}", MetricError)
        for name, value in params.as_dict(self.params).items():
            setattr(self, name, value)
        self.names = self.columns(self.params)
        self.ctx = ctx
        self._values: dict[str, list[Tensor]] = {name: [] for name in self.names}
        self._stream = Stream()
        self.setup()

    def setup(self) -> None:
        """What a metric prepares once its parameters and context are set."""

    def generator(self, device: torch.device) -> torch.Generator:
        """This metric's own generator, seeded from the run's seed and the batch index and advancing within
        the batch: its draws depend neither on the batches before nor on the other metrics."""
        return self._stream(self.ctx.engine, device)

    def state(self) -> dict[str, Any]:
        """The running state of ``accumulators`` (tensors on the CPU), saved after every batch."""
        return {name: getattr(self, name) for name in self.accumulators}

    def load_state(self, state: dict[str, Any]) -> None:
        """Go on from a saved :meth:`state` (a resumed run)."""
        for name in self.accumulators:
            setattr(self, name, state[name])

    @classmethod
    def columns(cls, params: Params) -> tuple[str, ...]:
        """The per-image columns written with these (validated) parameters: ``names``, unless an option adds or
        drops some (an instance's ``names`` are its own columns)."""
        return cls.names

    def score(self, batch: MetricInput) -> dict[str, Tensor]:
        raise NotImplementedError

    def update(self, batch: MetricInput) -> dict[str, Tensor]:
        values = self.score(batch)
        for name in self.names:
            self._values[name].append(values[name].detach())
        return values

    def compute(self) -> dict[str, Tensor]:
        means = {name: torch.cat(v).nanmean() for name, v in self._values.items() if v}
        return means | {name: fn(means) for name, fn in self.derived.items() if means}

    def curves(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Mean curves so far, ``{name: (x, mean y)}``, for metrics that trace one per image (else empty)."""
        return {}


def missing_capabilities(metric: type[Metric], capabilities: set[str]) -> list[str]:
    """What ``metric`` requires that the run cannot give, as readable descriptions."""
    return [CAPABILITIES[need] for need in sorted(metric.requires - capabilities)]


def metric_class(name: str) -> type[Metric]:
    """The metric registered as ``name``; MetricError listing the choices otherwise."""
    if name not in METRICS:
        raise MetricError(f"unknown metric {name!r}; valid choices: {', '.join(sorted(METRICS))}")
    return METRICS[name]


def metric_columns(name: str, values: dict[str, Any]) -> tuple[str, ...]:
    """The per-image columns metric ``name`` writes with the parameter ``values`` (a run's config)."""
    cls = metric_class(name)
    return cls.columns(params.validate(cls.Params, values, f"metrics.{name}", MetricError))


def build_metric(name: str, ctx: MetricContext | None = None, **hyper: Any) -> Metric:
    """Metric ``name`` with its hyper-parameters, in the context ``ctx``."""
    return metric_class(name)(ctx, **hyper)
