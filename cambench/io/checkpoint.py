"""A run's checkpoint, ``state.pt``: its progress and the metrics' running state, rewritten after every
batch so that a killed run can go on (``runner.resume``; the Python API's ``out_dir``).

It holds the batches (and images) that every explainer has written, the seconds spent and each
explainer's metrics' running state (the mean curves). It is written after the per-image files of the
batch, atomically (:func:`cambench.io.writer.replaced`), and loaded with ``weights_only=True``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cambench.io.writer import complete_rows, replaced

log = logging.getLogger(__name__)

STATE = "state.pt"


@dataclass
class Checkpoint:
    """A run's progress, saved after every batch."""

    batches: int = 0  # whole batches written by every explainer
    images: int = 0  # the images of those batches
    seconds: float = 0.0  # wall time of the run so far
    metrics: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # explainer -> metric -> state

    def save(self, folder: Path) -> None:
        with replaced(folder / STATE) as partial:
            torch.save(vars(self), partial)

    @classmethod
    def load(cls, folder: Path, files: list[str]) -> Checkpoint:
        """The checkpoint of ``folder``; a fresh one (with a warning) when one of the per-image ``files`` holds
        fewer rows than it (a file lost its end: the metrics' state would be ahead of the rows)."""
        path = folder / STATE
        checkpoint = cls(**torch.load(path, weights_only=True)) if path.exists() else cls()
        held = min(complete_rows(folder / name) for name in files)
        if held < checkpoint.images:
            log.warning("%s checkpointed %d images, its files hold %d: starting over", folder, checkpoint.images, held)
            return cls()
        return checkpoint
