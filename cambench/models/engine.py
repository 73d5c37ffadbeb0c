"""What every method and metric of a run shares: the split model, the scorer, the preprocessing,
mixed precision and the seed. Built once per run."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from cambench.data.preprocessing import Preprocessing
from cambench.models.scorer import Scorer
from cambench.models.split import SplitModel


@dataclass(frozen=True)
class Passes:
    """Declared cost of a method per image, in passes of each kind.

    forward: full forward passes; backward: backward passes through the layers after the target
    layer (never before it); tail: forward passes through the layers after the target layer only.
    """

    forward: float = 0.0
    backward: float = 0.0
    tail: float = 0.0

    def formula(self) -> str:
        parts = [f"{v:g}{k}" for k, v in (("F", self.forward), ("B", self.backward), ("T", self.tail)) if v]
        return " + ".join(parts) or "0"


@dataclass
class Engine:
    split: SplitModel
    scorer: Scorer
    preprocessing: Preprocessing
    autocast_dtype: torch.dtype | None = None
    seed: int = 0

    @property
    def model(self) -> nn.Module:
        return self.split.model

    def generator(self, device: torch.device) -> torch.Generator:
        """A fresh generator on ``device`` seeded with the run's seed."""
        return torch.Generator(device=device).manual_seed(self.seed)

    def actual_passes(self, declared: Passes) -> Passes:
        """The declared passes as this split runs them: with the hook fallback a tail pass is a full forward."""
        if self.split.tail_is_full_forward:
            return replace(declared, forward=declared.forward + declared.tail, tail=0.0)
        return declared
