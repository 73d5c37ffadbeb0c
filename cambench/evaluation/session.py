"""One evaluation from start to summary, as the command line and the Python API run it.

:func:`run_evaluation` moves each batch to the device, runs :func:`cambench.evaluation.loop.evaluate`
with the observers the options ask for (per-image files, saved maps and a checkpoint in a folder,
the progress bar, the heat-map grid sample, the split check), measures memory (see
:mod:`cambench.evaluation.memory`), and ends with every explainer's per-image rows, its summary
(:meth:`Explainer.summary`: mean, sd and bootstrap interval of every score and cost) and the mean
curves. When it is stopped (an error, Ctrl-C) the rows already written stay in their files, and the
log says where and how to go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from cambench.data.base import Batch
from cambench.evaluation.explainer import Explainer, Step
from cambench.evaluation.loop import Observer, evaluate
from cambench.evaluation.memory import PeakMemory
from cambench.evaluation.observers import Checkpointing, GridSample, MapFiles, Progress, RowFiles, SplitCheck
from cambench.io.checkpoint import Checkpoint
from cambench.models.split import SplitModel

log = logging.getLogger(__name__)


@dataclass
class Files:
    """Where an evaluation writes: ``folder``, each explainer's per-image file name, the checkpoint it goes on
    from (a fresh one to start), and whether the first explainer's raw maps are saved."""

    folder: Path
    per_image: dict[str, str]
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    save_maps: bool = False
    resume_hint: str = "run it again to go on from them"


@dataclass
class Outcome:
    rows: dict[str, pd.DataFrame]  # per explainer, its per-image rows (the earlier ones of a resumed run too)
    summaries: dict[str, pd.DataFrame]  # per explainer: metric, n, mean, sd, ci95_low, ci95_high
    curves: pd.DataFrame | None  # explainer, curve, x, mean; None when no metric traces curves
    seconds: float  # wall time, with the earlier processes of a resumed run
    split_difference: float | None  # largest |tail(head(x)) - model(x)| on the first batch (None: not checked)
    memory: str  # what peak_memory_mb measures here


class Collect(Observer):
    """The rows of every explainer, kept in memory (an evaluation that writes no files)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[dict]] = {}

    def after_batch(self, index: int, batch: Batch, steps: dict[str, Step]) -> None:
        for name, step in steps.items():
            self.rows.setdefault(name, []).extend(step.rows)


class BatchIndex(Observer):
    """Tells the explainers' engines the batch's index: their random draws are seeded per batch."""

    def __init__(self, explainers: list[Explainer]):
        self.engines = {id(e.method.engine): e.method.engine for e in explainers}.values()

    def before_batch(self, index: int, batch: Batch) -> None:
        for engine in self.engines:
            engine.batch = index


def on_device(
    batches: Iterable[Batch], start: int, device: torch.device, memory_format: torch.memory_format
) -> Iterator[tuple[int, Batch]]:
    """``(index, batch)`` on ``device``, numbered from ``start``."""
    for index, batch in enumerate(batches, start):
        yield index, batch.to(device, memory_format)


def run_evaluation(
    explainers: list[Explainer],
    batches: Iterable[Batch],
    device: torch.device,
    *,
    total_batches: int,
    total_images: int,
    target: str = "prediction",
    memory_format: torch.memory_format = torch.preserve_format,
    files: Files | None = None,
    grid: GridSample | None = None,
    split: SplitModel | None = None,
    progress: bool = True,
    description: str = "",
    bootstrap: int = 1000,
    seed: int = 0,
    observers: Sequence[Observer] = (),
) -> Outcome:
    """See the module docstring. ``batches`` are those still to do (a resumed run's files say how many are done);
    ``observers`` watch the loop before the session's own."""
    start = time.perf_counter()
    checkpoint = files.checkpoint if files else Checkpoint()
    for explainer in explainers:
        explainer.load_state(checkpoint.metrics.get(explainer.name, {}))
    memory = PeakMemory()
    for explainer in explainers:
        explainer.memory = memory
    memory.start(device)
    check = SplitCheck(split) if split is not None else None
    collect = Collect() if files is None else None
    rows = RowFiles(files.folder, files.per_image, checkpoint.images) if files else None
    saving = Checkpointing(files.folder, checkpoint, explainers) if files else None
    bar = Progress(explainers[0], total_batches, checkpoint.batches, total_images, description, progress)
    watching: list[Observer | None] = [BatchIndex(explainers), *observers, check, collect, rows, bar, grid]
    if files and files.save_maps:
        watching.append(MapFiles(files.folder / "maps", explainers[0].name, checkpoint.batches))
    watching.append(saving)  # last: after every file holds the batch
    try:
        evaluate(
            explainers,
            on_device(batches, checkpoint.batches, device, memory_format),
            device,
            target,
            [o for o in watching if o is not None],
        )
    except BaseException:
        if rows is not None and rows.images:
            kept = ", ".join(str(w.per_image) for w in rows.writers.values() if w.rows_written)
            log.error("stopped after %d images; their rows are kept in %s (%s)", rows.images, kept, files.resume_hint)
        raise
    finally:
        bar.close()
        memory.stop()
    if rows is not None:
        frames = {name: writer.rows() for name, writer in rows.writers.items()}
        seconds = saving.seconds
    else:
        frames = {e.name: pd.DataFrame(collect.rows.get(e.name, [])) for e in explainers}
        seconds = time.perf_counter() - start
    summaries = {e.name: e.summary(frames[e.name], bootstrap, seed) for e in explainers}
    curves = [c for e in explainers if (c := e.curves()) is not None]
    return Outcome(
        frames,
        summaries,
        pd.concat(curves, ignore_index=True) if curves else None,
        seconds,
        check.difference if check else None,
        memory.kind,
    )
