"""The leaderboard of a sweep, with its ranking reliability and pictures (``python -m cambench.aggregate``).

The folder is a Hydra sweep's folder (``multirun/<date>/<time>``), an ``outputs/`` tree of single
runs or any folder with finished runs below it. Written to ``--out`` (default
``results/leaderboards/<sweep folder name>/``): ``leaderboard.csv``/``.md`` (see
``cambench.analysis.leaderboard``), with ``--by KEY`` also ``leaderboard_by_<KEY>.csv``/``.md``,
``ranking.csv``, ``ranking_metrics.csv``, ``ranking_variants.csv`` and ``ranking.md`` (see
``cambench.analysis.ranking``), and per (model, dataset, variant) group ``bars_<group>.png``,
``curves_<group>.png`` (runs with curves) and ``heatmaps_<group>.png`` (runs with ``grid.npz``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cambench.analysis import leaderboard, plots, ranking
from cambench.analysis.leaderboard import GROUP, Leaderboard
from cambench.analysis.runs import find_runs

GRID_IMAGES = 8  # rows of the combined heat-map grid


def default_out(sweep: Path) -> Path:
    """``results/leaderboards/<name>``; a name without letters (Hydra's ``<time>`` folder) gets its
    parent's name in front (``2026-11-24_09-42-38``)."""
    sweep = Path(sweep).resolve()
    name = sweep.name if re.search("[A-Za-z]", sweep.name) else f"{sweep.parent.name}_{sweep.name}"
    return Path("results") / "leaderboards" / name


def slug(group: tuple[str, ...]) -> str:
    """A file name part for a (model, dataset, variant) group."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", "_".join(filter(None, group)))


def _write(path: Path, text: str, written: list[Path]) -> None:
    path.write_text(text)
    written.append(path)


def _curves(board: Leaderboard, group: tuple[str, ...]) -> tuple[pd.DataFrame | None, list[str]]:
    """The group's curves: each method's own (under its label), the baselines' from the newest run."""
    members = [e for e in board.entries if e.group == group]
    newest, baselines = leaderboard.group_baselines(members)
    found = [(e, curves) for e in members if (curves := e.run.curves()) is not None]
    own = [curves[curves["explainer"] == e.run.method].assign(explainer=e.method) for e, curves in found]
    theirs = [curves[curves["explainer"].isin(baselines)] for e, curves in found if e.run is newest]
    return (pd.concat(own + theirs, ignore_index=True) if own else None), baselines


def _heatmaps(board: Leaderboard, group: tuple[str, ...], path: Path, notes: list[str]) -> bool:
    """The maps of the group's runs that kept a ``grid.npz``, on the image ids they share, as one grid."""
    grids = {
        e.method: plots.load_grid_data(e.run.folder / plots.GRID_FILE)
        for e in board.entries
        if e.group == group and (e.run.folder / plots.GRID_FILE).exists()
    }
    if not grids:
        return False
    first = next(iter(grids.values()))
    ids = [i for i in first.ids if all(i in g.ids for g in grids.values())][:GRID_IMAGES]
    if not ids:
        title = leaderboard.group_title(group)
        notes.append(f"{title}: the runs' {plots.GRID_FILE} files share no image id, no heat-map grid")
        return False
    rows = [first.ids.index(i) for i in ids]
    maps = {method: g.maps[[g.ids.index(i) for i in ids]] for method, g in grids.items()}
    plots.heatmap_grid(first.pixels[rows], maps, ids, [first.labels[r] for r in rows], path)
    return True


def figures(board: Leaderboard, out: Path, notes: list[str]) -> list[Path]:
    """Per group: the bar chart, the curves and the heat-map grid where the runs have what they need."""
    written = []
    for group, rows in board.table.groupby(list(GROUP), sort=False):
        title, name = leaderboard.group_title(group), slug(group)
        if board.metrics:
            written.append(out / f"bars_{name}.png")
            plots.bar_chart(rows, board.metrics, board.lower, title, written[-1])
        curves, baselines = _curves(board, group)
        if curves is not None:
            written.append(out / f"curves_{name}.png")
            plots.curves_plot(curves, baselines, title, written[-1])
        if _heatmaps(board, group, out / f"heatmaps_{name}.png", notes):
            written.append(out / f"heatmaps_{name}.png")
    return written


def aggregate(
    folder: Path,
    out: Path | None = None,
    by: str | None = None,
    metrics: list[str] | None = None,
    resamples: int = ranking.RESAMPLES,
    seed: int = 0,
) -> tuple[list[Path], list[str]]:
    """Write the leaderboard, the ranking reliability and the figures of the runs under ``folder``;
    returns the files written and the notes (runs left out, images not paired, ...)."""
    board = leaderboard.build(find_runs(folder), metrics)
    out = Path(out) if out is not None else default_out(folder)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    title = f"# Leaderboard of {folder}\n\n"
    board.wide().to_csv(out / "leaderboard.csv", index=False)
    written.append(out / "leaderboard.csv")
    _write(out / "leaderboard.md", title + leaderboard.to_markdown(board), written)
    if by is not None:
        board.pivot(by).to_csv(out / f"leaderboard_by_{by}.csv", index=False)
        written.append(out / f"leaderboard_by_{by}.csv")
        _write(out / f"leaderboard_by_{by}.md", title + leaderboard.pivot_markdown(board, by), written)
    ranked = ranking.rank(board.entries, board.metrics, resamples, seed)
    for name, table in (("", ranked.stability), ("_metrics", ranked.metric_tau), ("_variants", ranked.variant_tau)):
        table.to_csv(out / f"ranking{name}.csv", index=False)
        written.append(out / f"ranking{name}.csv")
    text = ranking.to_markdown(ranked, board.lower)
    _write(out / "ranking.md", f"# Ranking reliability of {folder}\n\n{text}", written)
    notes = [*board.notes, *ranked.notes]
    written += figures(board, out, notes)
    return written, notes
