"""Saved maps: their file format, the runner's writer (one file per batch) and the loader.

The format is one ``.npz`` file (numpy's zip of named arrays, as ``numpy.savez`` writes it) with
- ``ids``: (N,) strings, the image ids as the dataset names them (``shapes-test-000123``, ImageNet
  file stems, ``class/file.png`` in a folder dataset);
- ``maps``: (N, H, W) floats, one map per image, at any resolution;
- ``targets``: (N,) integers, optional: the class each map explains (without them, the prediction).

A map is evaluated as a method's raw map (``cambench.methods.base.finalise``): ReLU, per-image
min-max, bilinear resize to the model's input size and min-max again, so a map in [0, 1] at the
input size is used as it is.

With ``runner.save_maps=true`` the runner writes the method's maps in this format as the run goes,
one compressed file per batch, ``maps/batch_000000.npz``, ``maps/batch_000001.npz``, ...: a killed
run keeps the maps of its finished batches and a resumed run goes on from them. It stores the
method's raw maps (``CAMOutput.raw``: its own resolution, float32, before ReLU and normalisation;
7 x 7 floats for Grad-CAM on a ResNet at 224 px), so the maps evaluated from the files are the
run's maps bit for bit. :func:`load_maps` reads a file, a folder of such files, or a run's folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cambench.errors import CambenchError
from cambench.io.writer import replaced

MAPS = "maps"  # the folder of a run's maps
SHARD = "batch_{:06d}.npz"


class MapsError(CambenchError):
    """A maps file that cannot be read or does not hold the format; the message names the file."""


@dataclass
class SavedMaps:
    ids: list[str]
    maps: Tensor  # (N, H, W) float32
    targets: Tensor | None  # (N,) int64, or None: the prediction is explained


def save_maps(path: Path, ids: list[str], maps: Tensor, targets: Tensor | None = None) -> None:
    """Write one compressed ``.npz`` of the format, atomically (a kill leaves the old file or none)."""
    arrays = {"ids": np.asarray(ids, dtype=str), "maps": maps.detach().float().cpu().numpy()}
    if targets is not None:
        arrays["targets"] = targets.detach().cpu().numpy().astype(np.int64)
    with replaced(path) as partial, partial.open("wb") as file:
        np.savez_compressed(file, **arrays)


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    folder = path / MAPS if (path / MAPS).is_dir() else path
    files = sorted(folder.glob("*.npz")) if folder.is_dir() else []
    if not files:
        raise MapsError(f"{path} is neither an .npz file nor a folder of them (a run saved with runner.save_maps=true)")
    return files


def _read(file: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """ids, maps and targets (or None) of one file, checked against the format."""
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as err:
        raise MapsError(f"cannot read {file} as an .npz of maps ({err}); ids must be strings, not objects") from None
    if missing := [key for key in ("ids", "maps") if key not in arrays]:
        raise MapsError(f"{file} has no {' and no '.join(missing)} array (it has {', '.join(arrays) or 'none'})")
    ids, maps, targets = arrays["ids"], arrays["maps"], arrays.get("targets")
    n = len(ids)
    if ids.ndim != 1 or maps.ndim != 3 or len(maps) != n or (targets is not None and targets.shape != (n,)):
        shapes = f"ids {ids.shape}, maps {maps.shape}" + ("" if targets is None else f", targets {targets.shape}")
        raise MapsError(f"{file}: want ids (N,), maps (N, H, W) and optional targets (N,), got {shapes}")
    numbers = (np.floating, np.integer)
    if not any(np.issubdtype(maps.dtype, t) for t in numbers) or (
        targets is not None and not np.issubdtype(targets.dtype, np.integer)
    ):
        kinds = f"maps {maps.dtype}" + ("" if targets is None else f", targets {targets.dtype}")
        raise MapsError(f"{file}: maps must be numbers and targets integers, got {kinds}")
    return ids, maps, targets


def load_maps(path: str | os.PathLike) -> SavedMaps:
    """The maps of an ``.npz`` file, of every ``.npz`` in a folder (in name order), or of a run's ``maps/``."""
    parts = [_read(file) for file in _files(Path(path))]
    if len({maps.shape[1:] for _, maps, _ in parts}) > 1 or len({t is None for *_, t in parts}) > 1:
        raise MapsError(f"the files of {path} differ in map size or in having targets: keep one run's files together")
    ids = [str(i) for part, _, _ in parts for i in part]
    if len(set(ids)) < len(ids):
        raise MapsError(f"{path} holds some image ids more than once: one map per image")
    maps = torch.from_numpy(np.concatenate([maps for _, maps, _ in parts])).float()
    targets = None if parts[0][2] is None else torch.from_numpy(np.concatenate([t for *_, t in parts])).long()
    return SavedMaps(ids, maps, targets)


class MapWriter:
    """The method's maps of a run, one file per batch in ``folder``; files from batch ``keep`` on are removed
    (a fresh run keeps none, a resumed one the batches it goes on from)."""

    def __init__(self, folder: Path, keep: int = 0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for file in self.folder.glob(SHARD.replace("{:06d}", "*")):
            if int(file.stem.split("_")[-1]) >= keep:
                file.unlink()
        self.batches = keep

    def append(self, ids: list[str], maps: Tensor, targets: Tensor) -> None:
        save_maps(self.folder / SHARD.format(self.batches), ids, maps, targets)
        self.batches += 1
