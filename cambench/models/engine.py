"""What every method and metric of a run shares: the split model, the scorer, the preprocessing,
mixed precision and the seed. Built once per run."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import nn

from cambench.data.preprocessing import Preprocessing
from cambench.models.scorer import Scorer
from cambench.models.split import SplitModel


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
