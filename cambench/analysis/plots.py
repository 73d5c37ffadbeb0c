"""Pictures of runs: saliency maps overlaid on their images, deletion/insertion curves, and the
leaderboard as bars with 95% intervals. Figures are drawn with matplotlib's object API
(``Figure``, rendered by Agg), so nothing needs a display and no global pyplot state is kept.

A run can keep the maps of a few images in a small file next to its results (``grid.npz``,
:func:`save_grid_data`), so that the aggregator can put the maps of every method of a sweep on the
same images side by side (:func:`load_grid_data`, :func:`heatmap_grid`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor

from cambench.methods.base import minmax, upsample

GRID_FILE = "grid.npz"  # a run's maps of a few images (save_grid_data), next to its other files
GRID_PNG = "grid.png"  # a run's heat-map grid: the method and its baselines (runner.save_grid)
CMAP = "jet"  # as CAM papers show maps
ALPHA = 0.5  # weight of the map's colour over the image
CELL = 1.7  # inches per image in the grid
DPI = 100
BASELINE_COLOUR = "0.55"


def overlay(image: Tensor, cam: Tensor, alpha: float = ALPHA) -> np.ndarray:
    """(H, W, 3) in [0, 1]: the image (3, H, W) in [0, 1] blended with the min-max normalised map
    (H, W) coloured by the jet colour map (blue low, dark red high)."""
    heat = colormaps[CMAP](minmax(cam.float()).numpy())[..., :3]
    return (1 - alpha) * image.float().permute(1, 2, 0).numpy() + alpha * heat


def heatmap_grid(
    pixels: Tensor,
    maps: Mapping[str, Tensor],
    ids: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    path: Path | None = None,
) -> Figure:
    """Rows are images, columns the image then each method's map overlaid on it, with a colour bar.
    ``pixels`` (N, 3, H, W) in [0, 1]; ``maps`` {method: (N, h, w)}, resized to H x W; ``ids`` and
    ``labels`` (the classes: names, or indices shown as ``class N``) title the rows. Saved as PNG to
    ``path`` when given."""
    n, (height, width) = len(pixels), pixels.shape[-2:]
    resized = {m: upsample(v.float(), (height, width)) for m, v in maps.items()}
    columns = ["image", *maps]
    fig = Figure(figsize=(CELL * len(columns) + 1.2, CELL * n + 0.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(n, len(columns), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(pixels[i].float().permute(1, 2, 0).clamp(0, 1).numpy())
        for j, method in enumerate(maps, start=1):
            axes[i, j].imshow(overlay(pixels[i], resized[method][i]).clip(0, 1))
        label = str(labels[i]) if labels is not None else ""
        name = [ids[i] if ids is not None else f"image {i}", f"class {label}" if label.isdigit() else label]
        axes[i, 0].set_ylabel("\n".join(filter(None, name)), fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, title in zip(axes[0], columns, strict=True):
        ax.set_title(title, fontsize=9)
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), CMAP), ax=axes, shrink=min(1.0, 3 / n), aspect=25)
    bar.set_label("map, min-max normalised per image", fontsize=8)
    return _saved(fig, path)


@dataclass
class GridData:
    """The maps of one method on a few images (see :func:`save_grid_data`)."""

    method: str
    ids: list[str]
    pixels: Tensor  # (N, 3, H, W) float in [0, 1]
    maps: Tensor  # (N, H, W) float, min-max normalised per map
    labels: list[str]


def save_grid_data(
    path: Path,
    method: str,
    ids: Sequence[str],
    pixels: Tensor,
    maps: Tensor,
    labels: Sequence[str] | None = None,
) -> None:
    """Write ``path`` (a run's ``GRID_FILE``) with ``method`` (str), ``ids`` (N strings), ``pixels``
    (N, 3, H, W) uint8 from images in [0, 1], ``maps`` (N, h, w) fp16, min-max normalised per map (so
    that any map fits fp16), and ``labels`` (N class names or indices as strings; empty when not given)."""
    labels = [""] * len(ids) if labels is None else [str(label) for label in labels]
    np.savez_compressed(
        path,
        method=np.array(method),
        ids=np.array([str(i) for i in ids]),
        pixels=(pixels.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy(),
        maps=minmax(maps.detach().float()).half().cpu().numpy(),
        labels=np.array(labels),
    )


def load_grid_data(path: Path) -> GridData:
    """The contents of a ``grid.npz`` written by :func:`save_grid_data`, as floats."""
    with np.load(path, allow_pickle=False) as data:
        return GridData(
            method=str(data["method"]),
            ids=data["ids"].tolist(),
            pixels=torch.from_numpy(data["pixels"]).float() / 255,
            maps=torch.from_numpy(data["maps"]).float(),
            labels=data["labels"].tolist(),
        )


def colours(names: Sequence[str], baselines: Collection[str] = ()) -> dict[str, object]:
    """A colour per explainer: the methods from tab10 in order, the baselines grey."""
    palette = colormaps["tab10"].colors
    methods = [name for name in names if name not in baselines]
    out: dict[str, object] = {name: palette[i % len(palette)] for i, name in enumerate(methods)}
    return out | {name: BASELINE_COLOUR for name in baselines}


def curves_plot(
    curves: pd.DataFrame, baselines: Collection[str] = (), title: str = "", path: Path | None = None
) -> Figure:
    """Deletion and insertion curves (panels) of every explainer in ``curves`` (explainer, curve, x,
    mean; ``curves.csv``'s columns). Least-relevant-first twins (``deletion_lerf``) are dashed in
    the same panel, baselines grey and dotted; the legend gives each curve's area (trapezoid)."""
    kinds = list(dict.fromkeys(curve.split("_")[0] for curve in curves["curve"]))
    fig = Figure(figsize=(5.5 * len(kinds), 4.2), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    palette = colours(list(dict.fromkeys(curves["explainer"])), baselines)
    for ax, kind in zip(axes, kinds, strict=True):
        for (explainer, curve), points in curves[curves["curve"].str.split("_").str[0] == kind].groupby(
            ["explainer", "curve"], sort=False
        ):
            x, y = points["x"].to_numpy(float), points["mean"].to_numpy(float)
            baseline, twin = explainer in baselines, curve != kind
            name = " ".join(filter(None, [explainer, "(baseline)" * baseline, curve[len(kind) + 1 :]]))
            style = ":" if baseline else "--" if twin else "-"
            ax.plot(x, y, style, color=palette[explainer], label=f"{name}: AUC {np.trapezoid(y, x):.3f}")
        ax.set_title(kind)
        ax.set_xlabel(f"fraction of pixels {'removed' if kind == 'deletion' else 'inserted'}")
        ax.set_ylabel("mean model output for the explained class")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _saved(fig, path)


def bar_chart(
    rows: pd.DataFrame, metrics: Sequence[str], lower: Collection[str], title: str = "", path: Path | None = None
) -> Figure:
    """One panel per metric: a horizontal bar per explainer with its 95% interval as error bar.
    ``rows``: method, kind (``method`` or ``baseline``), column, mean, ci95_low, ci95_high (the
    leaderboard's long table of one group); baselines grey and hatched."""
    explainers = list(dict.fromkeys(rows["method"]))
    baselines = set(rows.loc[rows["kind"] == "baseline", "method"])
    palette = colours(explainers, baselines)
    metrics = [m for m in metrics if m in set(rows["column"])]
    ncols = min(4, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    height = max(1.8, 0.3 * len(explainers) + 1.0)
    fig = Figure(figsize=(3.6 * ncols + 1.2, height * nrows + 0.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics, strict=False):
        part = rows[rows["column"] == metric].set_index("method").reindex(explainers)
        mean = part["mean"].to_numpy(float)
        error = np.nan_to_num(np.abs(np.stack([mean - part["ci95_low"], part["ci95_high"] - mean])))
        bars = ax.barh(range(len(explainers)), np.nan_to_num(mean), xerr=error, capsize=3)
        for bar, name in zip(bars, explainers, strict=True):
            bar.set_facecolor(palette[name])
            bar.set_hatch("//" if name in baselines else "")
        names = [f"{name} (baseline)" if name in baselines else name for name in explainers]
        ax.set_yticks(range(len(explainers)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{metric} ({'lower' if metric in lower else 'higher'} is better)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return _saved(fig, path)


def _saved(fig: Figure, path: Path | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
    return fig
