"""Side-by-side report of an experiment's finished runs against the papers' published values
(``python -m cambench.report``).

Reads the finished runs under SWEEP_DIR (``cambench.analysis.runs.find_runs``) and the published values
of the experiment (``cambench/analysis/published/EXPERIMENT.csv``), matches them by model, method and
metric, and writes ``report.md`` and ``report.csv`` to DIR (default ``results/reports/EXPERIMENT/``):
per cell and metric our mean with its 95% bootstrap interval, the published value, the difference
(ours - published) in the unit the paper prints the metric in (percent or fraction; our runs store
fractions), and how each number aggregates over images. ADCC has two rows, one per aggregation of
ours (mean of per-image ADCC, ADCC of the means), both beside the paper's one value, so a difference
of aggregation is visible rather than hidden. Cells without a published value (Fake-CAM, say) show
ours alone.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import pandas as pd

from cambench.analysis.leaderboard import markdown_table
from cambench.analysis.runs import FinishedRun, find_runs
from cambench.errors import CambenchError

# our summary rows -> (the papers' metric name, aggregation); other columns of a run are not reported
OURS = {
    "average_drop": ("Average Drop", "mean"),
    "increase_in_confidence": ("Increase in Confidence", "mean"),
    "deletion": ("Deletion", "mean"),
    "insertion": ("Insertion", "mean"),
    "coherency": ("Coherency", "mean"),
    "complexity": ("Complexity", "mean"),
    "adcc_per_image": ("ADCC", "mean"),
    "adcc_of_means": ("ADCC", "of_means"),
}
AGGREGATIONS = {"mean": "mean of per-image values", "of_means": "of the dataset means"}
SCALE = {"percent": 100.0, "fraction": 1.0}  # ours are fractions
DECIMALS = {"percent": 2, "fraction": 4}
KEYS = ["model", "method", "metric"]


class ReportError(CambenchError):
    """An experiment without published values, or runs of another experiment."""


def _published_dir() -> Traversable:
    return resources.files("cambench.analysis") / "published"


def experiments() -> list[str]:
    """The experiments with a published-values file."""
    return sorted(
        entry.name.removesuffix(".csv") for entry in _published_dir().iterdir() if entry.name.endswith(".csv")
    )


def published(experiment: str) -> pd.DataFrame:
    """The published values of ``experiment`` (see ``cambench/analysis/published/README.md``)."""
    path = _published_dir() / f"{experiment}.csv"
    if not path.is_file():
        known = ", ".join(experiments())
        raise ReportError(f"no published values for experiment {experiment!r}; choose one of {known}")
    with path.open() as f:
        table = pd.read_csv(f)
    if unknown := set(table["unit"]) - SCALE.keys():
        raise ReportError(f"{path}: unknown unit {', '.join(map(str, unknown))}; use {' or '.join(SCALE)}")
    if (twice := table[table.duplicated(KEYS)]).size:
        raise ReportError(
            f"{path}: {len(twice)} (model, method, metric) given twice, e.g. {twice[KEYS].iloc[0].tolist()}"
        )
    return table


def _check_experiment(run: FinishedRun, experiment: str) -> None:
    launched = [o.split("=", 1)[1] for o in run.overrides if o.startswith("experiment=")]
    if launched and launched[-1] != experiment:
        raise ReportError(
            f"{run.folder} was run with experiment={launched[-1]}, not {experiment}: give the sweep folder of "
            f"experiment={experiment} or report it as {launched[-1]}"
        )


def ours(runs: list[FinishedRun], root: Path) -> pd.DataFrame:
    """One row per run and reported summary row: model, method, metric (the papers' name), our column,
    its aggregation, n, mean and 95% interval (fractions), and the run's folder relative to ``root``."""
    rows = []
    for run in runs:
        summary = run.summary.set_index("metric")
        for column, (metric, aggregation) in OURS.items():
            if column in summary.index:
                s = summary.loc[column]
                rows.append(
                    {
                        "model": run.model,
                        "method": run.method,
                        "metric": metric,
                        "ours": column,
                        "aggregation": aggregation,
                        "n": int(s["n"]),
                        "mean": s["mean"],
                        "ci95_low": s["ci95_low"],
                        "ci95_high": s["ci95_high"],
                        "run": run.folder.relative_to(root).as_posix(),
                    }
                )
    return pd.DataFrame(rows)


def side_by_side(mine: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """``mine`` (from :func:`ours`) with the published value of each (model, method, metric) and the
    difference ours - published, both in the unit the paper prints the metric in (fractions for a metric
    it does not print)."""
    columns = [*KEYS, "ours", "aggregation", "published_aggregation", "unit", "n", "mean", "ci95_low", "ci95_high"]
    columns += ["published", "difference", "source", "table", "run"]
    theirs = paper[[*KEYS, "value", "unit", "aggregation", "source", "table"]].rename(
        columns={"value": "published", "unit": "published_unit", "aggregation": "published_aggregation"}
    )
    table = mine.merge(theirs, on=KEYS, how="left")
    units = dict(zip(paper["metric"], paper["unit"], strict=True))
    table["unit"] = [units.get(metric, "fraction") for metric in table["metric"]]
    scale = table["unit"].map(SCALE)
    for column in ("mean", "ci95_low", "ci95_high"):
        table[column] = table[column] * scale
    table["published"] = table["published"] / table["published_unit"].map(SCALE) * scale
    table["difference"] = table["mean"] - table["published"]
    return table[columns]


def markdown(table: pd.DataFrame, paper: pd.DataFrame, experiment: str, root: Path) -> str:
    """The report as Markdown: the side-by-side table, the protocol notes of the published values, and
    the published cells that no run covered."""

    def number(value: float, unit: str) -> str:
        return "-" if pd.isna(value) else f"{value:.{DECIMALS[unit]}f}"

    def aggregation(row: pd.Series) -> str:
        ours = AGGREGATIONS[row["aggregation"]]
        if pd.isna(row["published_aggregation"]) or row["published_aggregation"] == row["aggregation"]:
            return ours
        return f"{ours} (paper: {AGGREGATIONS[row['published_aggregation']]})"

    header = ["model", "method", "metric", "aggregation", "ours (95% interval)", "published", "ours - published"]
    header.append("unit")
    rows = []
    for _, row in table.iterrows():
        unit = row["unit"]
        ours = f"{number(row['mean'], unit)} ({number(row['ci95_low'], unit)}, {number(row['ci95_high'], unit)})"
        cells = [row["model"], row["method"], row["metric"], aggregation(row), ours]
        rows.append([*cells, number(row["published"], unit), number(row["difference"], unit), unit])
    lines = [f"# {experiment}: cambench vs published", "", f"Runs: `{root}`.", "", markdown_table(header, rows)]
    if paper.empty:
        lines += ["", f"No published values ship for {experiment}: see cambench/analysis/published/README.md."]
    else:
        sources = paper[["paper", "source", "table"]].drop_duplicates()
        lines += ["", "Published values: " + "; ".join(f"{p}, {s}, {t}" for p, s, t in sources.itertuples(index=False))]
        lines += ["", "Protocol of the published values:"]
        lines += [f"- {metric}: {notes}" for metric, notes in paper[["metric", "notes"]].drop_duplicates().values]
        covered = table[KEYS].drop_duplicates()
        missing = paper[KEYS].merge(covered, how="left", indicator=True).query("_merge == 'left_only'")
        cells = sorted({f"{m}/{x}" for m, x in missing[["model", "method"]].values})
        if cells:
            lines += ["", f"Published cells without a run here: {', '.join(cells)}."]
    return "\n".join(lines) + "\n"


def report(experiment: str, root: Path, out: Path) -> pd.DataFrame:
    """Write ``report.md`` and ``report.csv`` for the runs under ``root`` into ``out``; returns the table."""
    paper = published(experiment)
    runs = find_runs(root)
    for run in runs:
        _check_experiment(run, experiment)
    mine = ours(runs, Path(root))
    if mine.empty:
        raise ReportError(f"no run under {root} scored a metric of {experiment} ({', '.join(OURS)})")
    table = side_by_side(mine, paper)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "report.csv", index=False)
    (out / "report.md").write_text(markdown(table, paper, experiment, Path(root)))
    return table
