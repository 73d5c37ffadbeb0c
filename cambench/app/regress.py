"""CI regression of metric scores against a committed reference sweep (``python -m cambench.regress``).

The reference folder (``results/reference/`` of the repository) holds the sweep definition (``sweep.yaml``: cells of
Hydra overrides), the mean of every score of every cell (``reference.csv``), the per-metric
tolerances measured from run-to-run variation (``tolerance.yaml``, written by
``scripts/measure_tolerance.py``) and the environment the reference was made on. A regress run
reruns every cell in process (compose, validate, ``run``; each run folder records the cell's
overrides in ``.hydra/overrides.yaml``, as Hydra would, for ``python -m cambench.aggregate``),
compares each score's mean with the reference, prints what moved and writes the whole table (cell,
metric, reference, now, difference, tolerance, n, status) to ``DIR/regress.csv``. Exit status 0:
every score within its tolerance; 1: a score drifted, or a cell or score appeared or disappeared;
2: no usable reference or sweep. ``--update`` rewrites the reference from the rerun (after showing
what it changes): for a deliberate change of a method, metric or default only.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch
import yaml
from hydra import compose, initialize_config_module

from cambench.analysis.runs import load_finished
from cambench.app.config import validate
from cambench.app.run import run
from cambench.errors import CambenchError
from cambench.io.writer import versions

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "results" / "reference"  # of a checkout
SWEEP = "sweep.yaml"
REFERENCE = "reference.csv"
TOLERANCE = "tolerance.yaml"
ENVIRONMENT = "environment.json"
REPORT = "regress.csv"
KEY = ["cell", "metric"]
CELL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class RegressError(CambenchError):
    """A missing or unusable reference, sweep definition or tolerance file."""


@dataclass(frozen=True)
class Sweep:
    """Hydra overrides of every cell (``common``), then each cell's own, by cell name."""

    common: list[str]
    cells: dict[str, list[str]]


def load_sweep(path: Path) -> Sweep:
    """The sweep definition in ``path``; RegressError naming the problem otherwise."""
    if not path.exists():
        raise RegressError(
            f"no sweep definition at {path}: run from the repository root, or give --reference DIR or --sweep FILE"
        )
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise RegressError(
            f'{path} is not valid YAML{at}: quote overrides that hold brackets, as "runner.baselines=[]"'
        ) from None
    if not isinstance(spec, dict):
        spec = {}
    common, cells = spec.get("common", []), spec.get("cells")
    if not isinstance(cells, dict) or not cells:
        raise RegressError(f"{path}: 'cells' must map cell names to lists of Hydra overrides")
    for name, overrides in {"common": common, **cells}.items():
        if not CELL_NAME.fullmatch(str(name)):
            raise RegressError(f"{path}: cell name {name!r} may only use letters, digits, '_', '.' and '-'")
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise RegressError(f"{path}: {name} must be a list of Hydra overrides such as method=gradcam")
    return Sweep(list(common), {str(name): list(overrides) for name, overrides in cells.items()})


def run_sweep(sweep: Sweep, out: Path, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Every cell in process, into ``out/<cell>/``; one row per (cell, score): cell, metric, n, mean.
    The scores are the columns and derived values of each cell's metrics (not the costs).
    ``extra`` overrides go last (the tolerance measurement's variants)."""
    frames = []
    with initialize_config_module("cambench.conf", version_base="1.3"):
        for i, (cell, overrides) in enumerate(sweep.cells.items(), 1):
            fixed = [f"runner.results_table={out / 'runs.csv'}", "runner.progress=false"]
            cfg = validate(compose("config", overrides=[*sweep.common, *overrides, *extra, *fixed]))
            result = run(cfg, out / cell)
            # the overrides as Hydra records them, so that aggregate tells the cells' protocols apart
            recorded = result.out_dir / ".hydra" / "overrides.yaml"
            recorded.parent.mkdir(exist_ok=True)
            recorded.write_text(yaml.safe_dump([*sweep.common, *overrides, *extra]))
            print(f"[{i}/{len(sweep.cells)}] {cell}: {len(result.rows)} images, {result.seconds:.1f} s", flush=True)
            finished = load_finished(result.out_dir)
            summary = finished.summary.set_index("metric").loc[[*finished.scores, *finished.derived], ["n", "mean"]]
            frames.append(summary.reset_index().assign(cell=cell))
    return pd.concat(frames, ignore_index=True)[["cell", "metric", "n", "mean"]]


@dataclass(frozen=True)
class Tolerances:
    """Absolute tolerance of each metric's mean; ``default`` for metrics the measurement did not see."""

    default: float
    metrics: dict[str, float]

    def of(self, metric: str) -> float:
        return self.metrics.get(metric, self.default)


def load_tolerances(path: Path) -> Tolerances:
    """``tolerance.yaml``: ``default`` and ``metrics: {name: {tolerance: ...}}`` (see scripts/measure_tolerance.py)."""
    if not path.exists():
        raise RegressError(
            f"no tolerance file at {path}: measure one with scripts/measure_tolerance.py "
            f"or copy {REFERENCE_DIR / TOLERANCE}"
        )
    try:
        spec = yaml.safe_load(path.read_text())
        return Tolerances(float(spec["default"]), {m: float(v["tolerance"]) for m, v in spec["metrics"].items()})
    except (yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as err:
        expected = "'default: <float>' and 'metrics: {name: {tolerance: <float>}}'"
        raise RegressError(f"{path}: needs {expected} ({type(err).__name__})") from None


def load_reference(folder: Path) -> pd.DataFrame:
    path = folder / REFERENCE
    if not path.exists():
        raise RegressError(
            f"no reference at {path}: build it with python -m cambench.regress --update --reference {folder}"
        )
    return pd.read_csv(path)


def compare(reference: pd.DataFrame, now: pd.DataFrame, tolerances: Tolerances) -> pd.DataFrame:
    """One row per (cell, score) of either table: cell, metric, reference, now, difference (now -
    reference), tolerance, n_reference, n_now, status: ``ok``; ``drift`` (beyond the tolerance, NaN on
    one side only, or another count of images with a value); ``new`` (not in the reference);
    ``missing`` (not in the rerun)."""
    table = reference.merge(now, on=KEY, how="outer", suffixes=("_reference", "_now"), indicator=True, sort=False)
    table = table.rename(columns={"mean_reference": "reference", "mean_now": "now"})
    table["difference"] = table["now"] - table["reference"]
    table["tolerance"] = table["metric"].map(tolerances.of)
    beyond = table["difference"].abs() > table["tolerance"]
    nan_on_one_side = table["now"].isna() != table["reference"].isna()
    table["status"] = "ok"
    table.loc[beyond | nan_on_one_side | (table["n_now"] != table["n_reference"]), "status"] = "drift"
    table.loc[table["_merge"] == "right_only", "status"] = "new"
    table.loc[table["_merge"] == "left_only", "status"] = "missing"
    table[["n_reference", "n_now"]] = table[["n_reference", "n_now"]].astype("Int64")
    columns = [*KEY, "reference", "now", "difference", "tolerance", "n_reference", "n_now", "status"]
    return table[columns]


def report(table: pd.DataFrame) -> str:
    """What moved, as a table, a count of the scores within tolerance, and the cells that appeared or disappeared."""
    moved = table[table["status"] != "ok"]
    lines = [moved.to_string(index=False, float_format="%.6g")] if len(moved) else []
    lines.append(f"{len(table) - len(moved)} of {len(table)} scores within tolerance")
    status = table.groupby("cell", sort=False)["status"]
    for which, what in (("new", "cells not in the reference"), ("missing", "reference cells not in the sweep")):
        if cells := [cell for cell, values in status if (values == which).all()]:
            lines.append(f"{what}: {', '.join(cells)}")
    return "\n".join(lines)


def cpu_name() -> str:
    """The CPU model (Linux's /proc/cpuinfo), else what the platform says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return versions()["device"]


def environment(seconds: float) -> dict:
    """Where a sweep ran: library versions, CPU model, torch threads, wall time."""
    return versions() | {"cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "sweep_seconds": round(seconds)}


def write_reference(folder: Path, now: pd.DataFrame, sweep_file: Path, seconds: float) -> None:
    """The rerun as the new reference, with the environment, and the sweep it came from."""
    folder.mkdir(parents=True, exist_ok=True)
    now.to_csv(folder / REFERENCE, index=False)
    info = environment(seconds) | {"made": datetime.now().isoformat(timespec="seconds")}
    (folder / ENVIRONMENT).write_text(json.dumps(info, indent=2) + "\n")
    if sweep_file.resolve() != (folder / SWEEP).resolve():
        shutil.copyfile(sweep_file, folder / SWEEP)
