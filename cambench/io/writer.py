"""Files of a run: per-image rows (appended batch by batch, so a crash keeps what was done, and
cut back to whole batches when a run is resumed), the summary table, the config with library
versions, and a row in the shared results table.

The shared table is written by every run, also by the parallel jobs of a sweep: each append
reads, realigns and rewrites it under an exclusive file lock, through a temporary file and an
atomic rename, so no job's row is lost and no reader sees half a file."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import pandas as pd
import torch
from filelock import FileLock

PER_IMAGE = "per_image.csv"
SUMMARY = "summary.csv"
RUN_INFO = "run.json"
CURVES = "curves.csv"  # mean curves of the method and of each baseline, for plotting


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("cambench", "torch", "torchvision", "hydra-core", "pandas"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    out["cuda"] = torch.version.cuda or "none"
    out["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    return out


@contextmanager
def replaced(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` to write, moved onto ``path`` when the block ends: a reader or a
    kill sees the old file or the new one, never half of one. A block that fails leaves ``path`` as it
    was and removes the temporary file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield partial
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)


def complete_rows(path: Path) -> int:
    """Rows of a per-image file that were written whole (a kill may cut the last line short); 0 if there is none."""
    if not path.exists():
        return 0
    return max(path.read_bytes().count(b"\n") - 1, 0)


class RunWriter:
    """A per-image file, appended batch by batch. A fresh run starts it anew; a resumed run keeps its header
    and first ``keep`` rows byte for byte and appends after them."""

    def __init__(self, out_dir: Path, per_image: str = PER_IMAGE, keep: int = 0):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.per_image = self.out_dir / per_image
        if keep:
            lines = self.per_image.read_bytes().split(b"\n")
            with replaced(self.per_image) as partial:
                partial.write_bytes(b"\n".join(lines[: keep + 1]) + b"\n")
        else:
            self.per_image.unlink(missing_ok=True)
        self.rows_written = keep

    def append(self, rows: list[dict]) -> None:
        pd.DataFrame(rows).to_csv(self.per_image, mode="a", header=self.rows_written == 0, index=False)
        self.rows_written += len(rows)

    def rows(self) -> pd.DataFrame:
        return pd.read_csv(self.per_image, dtype={"id": str})


def write_run_info(folder: Path, summary: pd.DataFrame, config: dict, timings: dict) -> None:
    """A finished run's ``summary.csv``, then ``run.json`` (config, library versions, timings, the time it
    finished): written last, so its presence means the run finished."""
    summary.to_csv(folder / SUMMARY, index=False)
    info = {
        "config": config,
        "versions": versions(),
        "timings": timings,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (folder / RUN_INFO).write_text(json.dumps(info, indent=2) + "\n")


def append_to_table(table: Path, summary: pd.DataFrame, run: dict) -> None:
    """Add one row (the run's identity, then mean and interval of every metric) to ``table``."""
    row = dict(run)
    for rec in summary.itertuples():
        row[rec.metric] = rec.mean
        row[f"{rec.metric}_ci95"] = f"[{rec.ci95_low:.4f}, {rec.ci95_high:.4f}]"
    table = Path(table)
    table.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{table}.lock"):
        new = pd.DataFrame([row])
        if table.exists():  # columns may differ between runs (other metrics): realign
            new = pd.concat([pd.read_csv(table), new], ignore_index=True)
        with replaced(table) as partial:
            new.to_csv(partial, index=False)
