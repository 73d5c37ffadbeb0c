"""Finished runs on disk: a run's output folder holds ``run.json`` (written last, so its presence
means the run finished), ``summary.csv``, ``per_image.csv`` (+ one per sanity baseline),
``curves.csv`` where a metric has curves, and Hydra's ``.hydra/overrides.yaml`` when Hydra
launched it. :func:`find_runs` collects every finished run under a folder: a sweep's folder, an
``outputs/`` tree of single runs, or one run's folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from cambench.errors import CambenchError
from cambench.io.writer import CURVES, PER_IMAGE, RUN_INFO, SUMMARY
from cambench.metrics import METRICS, metric_columns


class RunsError(CambenchError):
    """No finished run where one was expected."""


@dataclass(frozen=True)
class FinishedRun:
    folder: Path
    info: dict  # run.json: config (resolved), versions, timings, finished

    @property
    def config(self) -> dict:
        return self.info["config"]

    @property
    def model(self) -> str:
        return self.config["model"]["name"]

    @property
    def dataset(self) -> str:
        return self.config["dataset"]["name"]

    @property
    def method(self) -> str:
        return self.config["method"]["name"]

    @property
    def metrics(self) -> dict[str, dict]:
        """The run's metrics (registered ones) with their parameters."""
        return {name: params or {} for name, params in self.config["metrics"].items() if name in METRICS}

    @property
    def scores(self) -> list[str]:
        """The per-image score columns of its metrics, in the run's metric order."""
        return [column for name, params in self.metrics.items() for column in metric_columns(name, params)]

    @property
    def derived(self) -> list[str]:
        """The values its metrics derive from the scores' means (summary rows only, e.g. ADCC of the means)."""
        return [column for name in self.metrics for column in METRICS[name].derived]

    @property
    def lower_is_better(self) -> set[str]:
        """Its score and derived columns where lower is better."""
        return set().union(*(METRICS[name].lower_is_better for name in self.metrics))

    @property
    def overrides(self) -> list[str]:
        """The command-line overrides Hydra recorded for the run ([] if it was not launched by Hydra)."""
        path = self.folder / ".hydra" / "overrides.yaml"
        return list(OmegaConf.load(path)) if path.exists() else []

    @cached_property
    def summary(self) -> pd.DataFrame:
        """metric, n, mean, sd, ci95_low, ci95_high (scores, derived values, then costs), the baselines'
        means and the flag column."""
        return pd.read_csv(self.folder / SUMMARY)

    @property
    def baselines(self) -> list[str]:
        """The sanity baselines scored beside the method: ``runner.baselines`` less the method itself,
        those with a summary file (``summary_<baseline>.csv``)."""
        names = [name for name in self.config.get("runner", {}).get("baselines", []) if name != self.method]
        return [name for name in names if (self.folder / f"summary_{name}.csv").exists()]

    def summary_of(self, explainer: str) -> pd.DataFrame:
        """The summary of the method (its ``summary.csv``) or of the sanity baseline ``explainer``."""
        return self.summary if explainer == self.method else pd.read_csv(self.folder / f"summary_{explainer}.csv")

    def rows(self, explainer: str | None = None) -> pd.DataFrame:
        """Per-image rows of the method (or of the sanity baseline ``explainer``), indexed by image id."""
        name = PER_IMAGE if explainer in (None, self.method) else f"per_image_{explainer}.csv"
        return pd.read_csv(self.folder / name).set_index("id")

    def curves(self) -> pd.DataFrame | None:
        """The mean curves (explainer, curve, x, mean), or None when no metric had curves."""
        path = self.folder / CURVES
        return pd.read_csv(path) if path.exists() else None


def load_finished(folder: Path) -> FinishedRun:
    """The finished run in ``folder``; RunsError if there is none."""
    folder = Path(folder)
    info = folder / RUN_INFO
    if not info.exists() or not (folder / PER_IMAGE).exists():
        raise RunsError(f"{folder} is not a finished run (no {RUN_INFO} or {PER_IMAGE}): give a run's output folder")
    return FinishedRun(folder, json.loads(info.read_text()))


def find_runs(root: Path) -> list[FinishedRun]:
    """Every finished run in ``root`` or below it, by folder name; RunsError if there is none."""
    root = Path(root)
    if not root.is_dir():
        raise RunsError(f"{root} is not a folder: give a sweep's folder, an outputs/ tree or a run's folder")
    runs = [load_finished(info.parent) for info in sorted(root.rglob(RUN_INFO)) if (info.parent / PER_IMAGE).exists()]
    if not runs:
        raise RunsError(f"no finished run under {root} (a finished run's folder holds {RUN_INFO} and {PER_IMAGE})")
    return runs
