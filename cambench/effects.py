"""What each key of a run's config does to its results, declared once: the resume fingerprint
(:func:`cambench.app.resume.fingerprint`) and the leaderboard's protocol variants
(:mod:`cambench.analysis.leaderboard`) both read it.

Every key has one of three effects:

- ``bookkeeping``: changes no value in any file a run writes: how the run is shown, loaded and resumed,
  and which shared table its summary row goes to (``runner.progress``, ``num_workers``, ``results_table``,
  ``resume``, ``resume_roots``).
- ``selection``: changes what is computed or stored, or how it is batched, but never the value of a score:
  the batch sizes, the bootstrap resamples (the intervals, not the means), the sanity baselines, the metrics
  added where the dataset allows them, the saved grid and maps, and the choice of metrics (``metrics``).
- ``scores``: every other key: it may change a score. The images (``runner.num_images``, ``runner.seed``),
  the explained class (``runner.target``), the number formats and the device (``runner.autocast``;
  ``runner.channels_last`` and ``runner.device`` move scores in the last bits only, and count all the same),
  and every key of the model, method and dataset and every metric parameter.

The fingerprint leaves out the bookkeeping keys only: a resumed run must write the files of the run it goes
on from. The leaderboard makes protocol variants of keys that change scores only: runs that differ in a
bookkeeping or selection key share a cell (the model, method and dataset, which name the cell, it labels
itself).

``runner.batch_size`` and ``runner.score_batch_size`` are selection keys by design: a score must not depend
on how the images are batched. Two caveats: the chunk sizes of the forward passes can move a score in the
last bits (as ``channels_last`` does), and until every random draw is independent of the batching, the
draws of a stochastic method or metric, reseeded per batch, depend on ``runner.batch_size``.

The runner's keys declare their effect where they are declared: on their field of :class:`RunnerConfig`,
the runner's schema, which lives here (below the analysis layer that reads it) and which
:mod:`cambench.app.config` validates ``runner:`` against; ``conf/runner/default.yaml`` holds the same keys
and defaults (a test checks it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

BOOKKEEPING, SELECTION, SCORES = "bookkeeping", "selection", "scores"
LEVELS = (BOOKKEEPING, SELECTION, SCORES)
EFFECT = "effect"  # the metadata key of a field's level


@dataclass
class RunnerConfig:
    """The runner's keys: the type, default and effect on the results of each."""

    batch_size: int = field(default=16, metadata={EFFECT: SELECTION})
    # a seeded, label-stratified random subset; null: the whole dataset
    num_images: int | None = field(default=64, metadata={EFFECT: SCORES})
    device: str = field(default="auto", metadata={EFFECT: SCORES})  # auto | cpu | cuda | cuda:N
    autocast: str | None = field(default=None, metadata={EFFECT: SCORES})  # null | bf16 | fp16
    # NHWC memory format: faster convolutions on CPUs and tensor cores
    channels_last: bool = field(default=True, metadata={EFFECT: SCORES})
    target: str = field(default="prediction", metadata={EFFECT: SCORES})  # prediction | label
    seed: int = field(default=0, metadata={EFFECT: SCORES})
    # rows per forward chunk of perturbed inputs; auto: probed once per run
    score_batch_size: Any = field(default="auto", metadata={EFFECT: SELECTION})
    num_workers: int = field(default=0, metadata={EFFECT: BOOKKEEPING})
    # resamples of the 95% bootstrap interval
    bootstrap: int = field(default=1000, metadata={EFFECT: SELECTION})
    # a summary row is appended per run
    results_table: str = field(default="results/runs.csv", metadata={EFFECT: BOOKKEEPING})
    # sanity methods scored beside the method
    baselines: list[str] = field(default_factory=lambda: ["fakecam"], metadata={EFFECT: SELECTION})
    # metrics added to every run whose dataset gives what they need (ground-truth masks), at their defaults
    add_when_available: list[str] = field(
        default_factory=lambda: ["localisation", "grid_pointing_game"], metadata={EFFECT: SELECTION}
    )
    progress: bool = field(default=True, metadata={EFFECT: BOOKKEEPING})
    # grid.png (the maps of the method and baselines on the first 8 images) and grid.npz
    save_grid: bool = field(default=False, metadata={EFFECT: SELECTION})
    # the method's maps, batch by batch, in maps/ (cambench.io.maps)
    save_maps: bool = field(default=False, metadata={EFFECT: SELECTION})
    # go on from the newest earlier run of this config under resume_roots; skip a finished one
    resume: bool = field(default=False, metadata={EFFECT: BOOKKEEPING})
    # Hydra's output trees
    resume_roots: list[str] = field(default_factory=lambda: ["outputs", "multirun"], metadata={EFFECT: BOOKKEEPING})


RUNNER = {f.name: f.metadata[EFFECT] for f in fields(RunnerConfig)}
OTHER = {"metrics": SELECTION}  # the declared keys outside the runner group: the choice of metrics
DECLARED = {f"runner.{name}": level for name, level in RUNNER.items()} | OTHER


def effect(key: str) -> str:
    """The effect of a config key, dotted (``runner.batch_size``, ``metrics``, ``method.samples``): the declared
    one, else ``scores`` (every key of the other groups, and a runner key that is no longer declared)."""
    return DECLARED.get(key, SCORES)


def keys(*levels: str) -> frozenset[str]:
    """The declared keys (dotted) with one of ``levels``."""
    unknown = set(levels) - set(LEVELS)
    if unknown:
        raise ValueError(f"unknown effect {sorted(unknown)}; valid: {', '.join(LEVELS)}")
    return frozenset(key for key, level in DECLARED.items() if level in levels)
