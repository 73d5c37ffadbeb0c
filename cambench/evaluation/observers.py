"""Observers of the evaluation loop: everything a run does besides explaining and scoring.

Each one watches :func:`cambench.evaluation.loop.evaluate` and does one job: :class:`RowFiles`
appends each explainer's rows to its per-image file, :class:`MapFiles` saves the method's raw maps,
:class:`Checkpointing` rewrites the checkpoint once a batch is written everywhere, :class:`Progress`
shows a progress bar with the running means (and logs the estimated time after the first batch),
:class:`GridSample` keeps the first images and their maps for the heat-map grid, and
:class:`SplitCheck` checks on the first batch that the split model reproduces the model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from cambench.data.base import Batch
from cambench.data.preprocessing import Preprocessing
from cambench.evaluation.explainer import Explainer, Step
from cambench.evaluation.loop import Observer
from cambench.io.checkpoint import Checkpoint
from cambench.io.maps import MapWriter
from cambench.io.writer import RunWriter
from cambench.models.split import SplitModel

log = logging.getLogger(__name__)


class RowFiles(Observer):
    """Each explainer's rows appended to its per-image file (``files``: explainer name -> file name) in
    ``folder``; a resumed run keeps the first ``keep`` rows of each."""

    def __init__(self, folder: Path, files: dict[str, str], keep: int = 0):
        self.writers = {name: RunWriter(folder, file, keep) for name, file in files.items()}

    def after_batch(self, index: int, batch: Batch, steps: dict[str, Step]) -> None:
        for name, writer in self.writers.items():
            writer.append(steps[name].rows)

    @property
    def images(self) -> int:
        """Images whose rows every file holds."""
        return min(writer.rows_written for writer in self.writers.values())


class MapFiles(Observer):
    """The raw maps of explainer ``name``, one file per batch (:class:`cambench.io.maps.MapWriter`)."""

    def __init__(self, folder: Path, name: str, keep: int = 0):
        self.name, self.writer = name, MapWriter(folder, keep)

    def after_batch(self, index: int, batch: Batch, steps: dict[str, Step]) -> None:
        out = steps[self.name].output
        self.writer.append(batch.ids, out.raw, out.targets)


class Checkpointing(Observer):
    """The checkpoint in ``folder``, rewritten after every batch (after the observers before it in the list
    wrote the batch): batches, images, seconds so far and every explainer's metric state."""

    def __init__(self, folder: Path, checkpoint: Checkpoint, explainers: list[Explainer]):
        self.folder, self.checkpoint, self.explainers = folder, checkpoint, explainers
        self.start, self.before = time.perf_counter(), checkpoint.seconds  # of the earlier processes of a run

    @property
    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def after_batch(self, index: int, batch: Batch, steps: dict[str, Step]) -> None:
        self.checkpoint.batches, self.checkpoint.images = index + 1, self.checkpoint.images + len(batch.ids)
        self.checkpoint.seconds = self.seconds
        self.checkpoint.metrics = {e.name: e.state() for e in self.explainers}
        self.checkpoint.save(self.folder)


class Progress(Observer):
    """A progress bar over the batches with the running means of ``explainer``'s metrics, and after the first
    batch a log line with the estimated time of the rest."""

    def __init__(self, explainer: Explainer, total: int, done: int, images: int, description: str, show: bool):
        self.explainer, self.images = explainer, images
        self.bar = tqdm(total=total, initial=done, desc=description, unit="batch", disable=not show)
        self.start = time.perf_counter()
        self.first = True

    def after_batch(self, index: int, batch: Batch, steps: dict[str, Step]) -> None:
        self.bar.update()
        means = {k: f"{v.item():.3f}" for m in self.explainer.metrics.values() for k, v in m.compute().items()}
        self.bar.set_postfix(means)
        if self.first:
            self.first = False
            seconds = time.perf_counter() - self.start
            left = self.bar.total - self.bar.n
            if left > 0:
                log.info(
                    "first batch: %.1f s for %d images; about %s for the other %d batches (%d images in all)",
                    seconds,
                    len(batch.ids),
                    duration(seconds * left),
                    left,
                    self.images,
                )

    def close(self) -> None:
        self.bar.close()


def duration(seconds: float) -> str:
    """``42 s``, ``7.5 min``, ``2.1 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class SplitCheck(Observer):
    """On the first batch, that the split model reproduces the model (``SplitModel.verify``): its largest
    difference is kept for the run record."""

    def __init__(self, split: SplitModel):
        self.split = split
        self.difference: float | None = None

    def before_batch(self, index: int, batch: Batch) -> None:
        if self.difference is None:
            self.difference = self.split.verify(batch.images[:1])


@dataclass
class GridSample(Observer):
    """The first ``size`` images with every explainer's maps, for the heat-map grid (``runner.save_grid``):
    saved as the method's ``grid.npz`` (the aggregator's grid of a sweep) and ``grid.png`` (the method and
    its baselines), see :mod:`cambench.analysis.plots`."""

    size: int
    preprocessing: Preprocessing
    pixels: list[torch.Tensor] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    maps: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def after_batch(self, index: int, batch: Batch, steps: dict[str, Step]) -> None:
        take = max(0, min(self.size - len(self.ids), len(batch.ids)))
        if take:
            self.pixels.append(self.preprocessing.to_pixels(batch.images[:take]).clamp(0, 1).float().cpu())
            self.ids += list(batch.ids[:take])
            self.labels += [str(label) for label in batch.labels[:take].tolist()]
            for name, step in steps.items():
                self.maps.setdefault(name, []).append(step.output.maps[:take].float().cpu())

    def save(self, out_dir: Path, method: str) -> None:
        if not self.ids:
            return
        from cambench.analysis.plots import GRID_FILE, GRID_PNG, heatmap_grid, save_grid_data  # matplotlib: only here

        pixels, maps = torch.cat(self.pixels), {name: torch.cat(v) for name, v in self.maps.items()}
        save_grid_data(out_dir / GRID_FILE, method, self.ids, pixels, maps[method], self.labels)
        heatmap_grid(pixels, maps, self.ids, self.labels, out_dir / GRID_PNG)
