"""What every method and metric of a run shares: the split model, the scorer, the preprocessing,
mixed precision, the seed and the batch being evaluated. Built once per run.

Random draws are seeded per batch: every method and metric draws from a :class:`Stream` of its own,
reseeded from (run seed, batch index) whenever the runner moves the engine to another batch, so a
batch's draws do not depend on how many batches ran before it (a resumed run draws what an
uninterrupted one draws) and adding a metric changes no other's draws."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import nn

from cambench.data.preprocessing import Preprocessing
from cambench.models.layers import layer_paths
from cambench.models.scorer import Scorer
from cambench.models.split import SplitModel, split_model


@dataclass(frozen=True)
class Passes:
    """Declared cost of a method per image, in passes of each kind.

    forward (F): full forward passes; backward (B): backward passes through the layers after the
    target layer (never before it); tail (T): forward passes through the layers after the target
    layer only; input_backward (Bx): backward passes through the whole model, down to the input
    (methods that optimise or propagate to the pixels).
    """

    forward: float = 0.0
    backward: float = 0.0
    tail: float = 0.0
    input_backward: float = 0.0

    SYMBOLS: ClassVar[dict[str, str]] = {"forward": "F", "backward": "B", "tail": "T", "input_backward": "Bx"}

    def formula(self) -> str:
        parts = [f"{getattr(self, k):g}{symbol}" for k, symbol in self.SYMBOLS.items() if getattr(self, k)]
        return " + ".join(parts) or "0"

    @classmethod
    def columns(cls) -> list[str]:
        """Names of the per-image row columns that carry the passes."""
        return [f"passes_{k}" for k in cls.SYMBOLS]


@dataclass
class Engine:
    split: SplitModel
    scorer: Scorer
    preprocessing: Preprocessing
    autocast_dtype: torch.dtype | None = None
    seed: int = 0
    batch: int = 0  # index of the batch being evaluated (set by the runner): the streams reseed from it

    @property
    def model(self) -> nn.Module:
        return self.split.model

    def generator(self, device: torch.device) -> torch.Generator:
        """A fresh generator on ``device`` seeded with the run's seed (the same draws whatever the batch)."""
        return torch.Generator(device=device).manual_seed(self.seed)

    def rebuilt(self, model: nn.Module) -> Engine:
        """An engine of the same options for ``model`` (a copy of this one's model, say), split at the same layers."""
        scorer = self.scorer
        return build_engine(
            model,
            self.split.layers,
            self.preprocessing,
            self.seed,
            scorer.batch_size,
            self.autocast_dtype,
            scorer.memory_format,
        )

    def actual_passes(self, declared: Passes) -> Passes:
        """The declared passes as this split runs them: with the hook fallback a tail pass is a full forward."""
        if self.split.tail_is_full_forward:
            return replace(declared, forward=declared.forward + declared.tail, tail=0.0)
        return declared


def build_engine(
    model: nn.Module,
    target_layers: str | nn.Module | Sequence[str | nn.Module] | None = None,
    preprocessing: Preprocessing | None = None,
    seed: int = 0,
    score_batch_size: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    memory_format: torch.memory_format = torch.preserve_format,
) -> Engine:
    """The engine of ``model`` (put in eval mode) split at ``target_layers``: dotted module paths or the
    modules themselves (pytorch-grad-cam's ``target_layers=[model.layer4]``), None for the model's default
    layer. ``score_batch_size``: rows per forward chunk of perturbed inputs (None: probed once per kind of
    row). The one place an engine is made: the runner, the Python API and the metrics that rebuild a
    model (model randomisation) call it."""
    paths = layer_paths(model, target_layers)
    split = split_model(model.eval(), paths)
    scorer = Scorer(split, score_batch_size, autocast_dtype, memory_format)
    return Engine(split, scorer, preprocessing or Preprocessing(), autocast_dtype, seed)


# splitmix64's increment: odd, so every batch gets other low 32 bits (all that seeds torch's CPU generator)
WEYL = 0x9E3779B97F4A7C15


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch ``batch``'s draws: the run's seed for the first batch, one Weyl step more per batch."""
    return (seed + batch * WEYL) % 2**64


class Stream:
    """A method's or a metric's own random generator, reseeded from (run seed, batch index) whenever the
    engine is at another batch (or the draws move to another device); within a batch it advances."""

    def __init__(self) -> None:
        self._generator: torch.Generator | None = None
        self._at: tuple[int, int, torch.device] | None = None

    def __call__(self, engine: Engine, device: torch.device) -> torch.Generator:
        at = (engine.seed, engine.batch, torch.device(device))
        if self._generator is None or at != self._at:
            self._generator = torch.Generator(device=device).manual_seed(batch_seed(engine.seed, engine.batch))
            self._at = at
        return self._generator
