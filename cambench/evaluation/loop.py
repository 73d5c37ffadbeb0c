"""The evaluation loop: every explainer on every batch, and observers for everything else.

:func:`evaluate` is the loop the command line and the Python API share: for each batch, the first
explainer (the method) explains the batch's targets (its labels with ``target="label"``, else the
predictions) and every further explainer (a sanity baseline) explains the classes the first one
explained. It computes nothing else and keeps nothing: writing the rows, saving maps and
checkpoints, the progress bar, the heat-map grid and the split check are observers
(:mod:`cambench.evaluation.observers`), called before and after each batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from cambench.data.base import Batch
from cambench.evaluation.explainer import Explainer, Step

TARGETS = ("prediction", "label")


class Observer:
    """What watches the loop; every hook does nothing unless overridden."""

    def before_batch(self, index: int, batch: Batch) -> None:
        """Batch ``index`` is about to be explained (on the device)."""

    def after_batch(self, index: int, batch: Batch, steps: dict[str, Step]) -> None:
        """Every explainer has explained and scored batch ``index``: ``steps`` by explainer name, in order."""


def evaluate(
    explainers: Sequence[Explainer],
    batches: Iterable[tuple[int, Batch]],
    device: torch.device,
    target: str = "prediction",
    observers: Sequence[Observer] = (),
) -> None:
    """Run every explainer on every ``(index, batch)`` (batches already on ``device``); see the module docstring."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    for index, batch in batches:
        for observer in observers:
            observer.before_batch(index, batch)
        targets = batch.labels if target == "label" else None
        steps: dict[str, Step] = {}
        for explainer in explainers:
            steps[explainer.name] = step = explainer.step(batch, targets, device)
            targets = step.output.targets  # the baselines explain the method's classes
        for observer in observers:
            observer.after_batch(index, batch, steps)
