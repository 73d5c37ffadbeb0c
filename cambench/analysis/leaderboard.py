"""The leaderboard of a sweep (or of any folder of finished runs): one row per (model, dataset,
protocol variant, method) with every metric's mean and 95% interval, the cost columns, the sanity
baselines as rows of their own and the best value of each column marked.

Runs are told apart by their Hydra overrides (``.hydra/overrides.yaml``): the method's own
hyper-parameters (``method.*``) that not every run shares join the method's label
(``smoothgradcampp samples=8``), and every other override that not every run shares (a substrate,
``runner.target``, a target layer) makes a protocol *variant* (``runner.target=label``). The value
of such a key is read from each run's resolved config, so runs with and without an override that
sets the default land in the same cell. A parameter of a metric that only some runs score makes a
variant only where the runs that score it disagree; the keys that change no score (the bookkeeping and
selection keys of :mod:`cambench.effects`: the choice of metrics, batch sizes, bootstrap resamples,
baselines, saved files, ...) never do. Runs that record no overrides
(not launched by Hydra) but share a cell while their configs differ are told apart by the config
keys that differ. When a cell was run more than once, the newest run (``finished`` in ``run.json``)
is kept and a note says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from cambench.analysis.runs import FinishedRun
from cambench.effects import BOOKKEEPING, SELECTION, keys
from cambench.errors import CambenchError
from cambench.metrics import METRICS

GROUP = ("model", "dataset", "variant")  # the runs whose methods are compared with each other
IDENTITY = (*GROUP, "method")
BY_KEYS = GROUP  # what --by can pivot on
CELL = {"model", "model.name", "method", "method.name", "dataset", "dataset.name"}  # overrides that name the cell
NOT_VARIANTS = CELL | keys(BOOKKEEPING, SELECTION)  # and those that change no score (cambench.effects)
METHOD_PREFIX = "method."
METRIC_SECONDS = "seconds_"  # a metric's time per image is the cost column seconds_<metric>
INTERVAL = ("ci95_low", "ci95_high")
PIVOT_SEPARATOR = "; "  # between the values of --by KEY in the pivot's best column


class LeaderboardError(CambenchError):
    """A leaderboard that cannot be made as asked (an unknown metric or pivot key)."""


@dataclass(frozen=True)
class Entry:
    """A kept run with its place in the leaderboard: its method label and protocol variant."""

    model: str
    dataset: str
    variant: str  # "" when every run has the same protocol
    method: str  # the method's name, with its differing hyper-parameters
    run: FinishedRun

    @property
    def group(self) -> tuple[str, str, str]:
        return (self.model, self.dataset, self.variant)


def _format_value(value: object) -> str:
    if isinstance(value, list):
        return "[" + ",".join(map(_format_value, value)) + "]"
    return "null" if value is None else str(value)


def _overrides(run: FinishedRun) -> dict[str, str]:
    """The run's overrides as key -> value (``+`` / ``++`` dropped; a deletion ``~key`` as ``(deleted)``)."""
    out = {}
    for override in run.overrides:
        key, _, value = override.partition("=")
        out[key.lstrip("+~")] = "(deleted)" if key.startswith("~") else value
    return out


def _setting(run: FinishedRun, overrides: dict[str, str], key: str) -> str | None:
    """The value of ``key`` in the run's resolved config (a group choice: the override or ``(default)``),
    or None when the key does not exist for the run (another method's parameter)."""
    node: object = run.config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return overrides.get(key)
        node = node[part]
    return overrides.get(key, "(default)") if isinstance(node, dict) else _format_value(node)


def _flatten(node: object, prefix: str = "") -> dict[str, str]:
    """The leaves of a resolved config as dotted key -> value."""
    if not isinstance(node, dict):
        return {prefix.removesuffix("."): _format_value(node)}
    return {k: v for key, child in node.items() for k, v in _flatten(child, f"{prefix}{key}.").items()}


def _differing(runs: list[FinishedRun]) -> set[str]:
    """The config keys whose values are not the same in all of ``runs`` (bookkeeping keys aside)."""
    flat = [_flatten(run.config) for run in runs]
    return {key for key in set().union(*flat) if len({f.get(key) for f in flat}) > 1} - NOT_VARIANTS


def _varies(key: str, values: list[str | None]) -> bool:
    """Whether ``key`` tells runs apart: a method parameter when its values differ (a run of another
    method, without it, counts as a value); any other key when the runs that have it disagree."""
    present = set(values) if key.startswith(METHOD_PREFIX) else set(values) - {None}
    return len(present) > 1


def _cells(runs: list[FinishedRun], overrides: list[dict[str, str]], keys: set[str]) -> dict[tuple, list[Entry]]:
    """The runs as entries, by cell: method label and variant from the ``keys`` whose values differ."""
    keys_sorted = sorted(keys)
    settings = [{key: _setting(run, o, key) for key in keys_sorted} for run, o in zip(runs, overrides, strict=True)]
    varying = [key for key in keys_sorted if _varies(key, [s[key] for s in settings])]
    cells: dict[tuple, list[Entry]] = {}
    for run, setting in zip(runs, settings, strict=True):
        chosen = [(key, setting[key]) for key in varying if setting[key] is not None]
        params = [f"{key.removeprefix(METHOD_PREFIX)}={v}" for key, v in chosen if key.startswith(METHOD_PREFIX)]
        variant = " ".join(f"{key}={v}" for key, v in chosen if not key.startswith(METHOD_PREFIX))
        entry = Entry(run.model, run.dataset, variant, " ".join([run.method, *params]), run)
        cells.setdefault((*entry.group, entry.method), []).append(entry)
    return cells


def select(runs: Iterable[FinishedRun]) -> tuple[list[Entry], list[str]]:
    """Label every run (method label, variant), keep the newest run of each cell; also the notes on
    the runs left out. Runs that share a cell by their overrides but differ in their resolved
    configs (runs not launched by Hydra record no overrides) are told apart by the config keys that
    differ."""
    runs = list(runs)
    overrides = [_overrides(run) for run in runs]
    keys = {key for o in overrides for key in o} - NOT_VARIANTS
    cells = _cells(runs, overrides, keys)
    hidden = set().union(*(_differing([e.run for e in cell]) for cell in cells.values() if len(cell) > 1))
    if hidden - keys:
        cells = _cells(runs, overrides, keys | hidden)

    entries, notes = [], []
    for cell, candidates in cells.items():
        candidates.sort(key=lambda e: (e.run.info.get("finished", ""), str(e.run.folder)))
        entries.append(candidates[-1])
        if len(candidates) > 1:
            dropped = ", ".join(f"{e.run.folder} ({e.run.info.get('finished')})" for e in candidates[:-1])
            notes.append(
                f"{' / '.join(filter(None, cell))} ran {len(candidates)} times: kept the newest, "
                f"{candidates[-1].run.folder} ({candidates[-1].run.info.get('finished')}); left out {dropped}"
            )
    return entries, notes


def group_baselines(members: list[Entry]) -> tuple[FinishedRun, list[str]]:
    """The run whose sanity baselines stand for a group's (its newest: every run of a group scores
    them on the same images and classes) and those of its baselines that no method row of the group is."""
    newest = max(members, key=lambda e: e.run.info.get("finished", "")).run
    methods = {e.run.method for e in members}
    return newest, [b for b in newest.baselines if b not in methods]


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


@dataclass
class Leaderboard:
    """The leaderboard in long form (``table``: one row per explainer and column) and what it came from."""

    table: pd.DataFrame  # model, dataset, variant, method, kind, images, run_dir, finished, column, mean, ci95_*, best
    entries: list[Entry]
    metrics: list[str]  # score and derived columns, in the runs' metric order
    costs: list[str]  # seconds_*, passes_*, peak_memory_mb
    lower: set[str]  # metrics where lower is better (costs always are)
    notes: list[str] = field(default_factory=list)

    def better_is_lower(self, column: str) -> bool:
        return column in self.lower or column in self.costs

    def wide(self) -> pd.DataFrame:
        """One row per explainer: identity, kind, images, per metric its mean and interval
        (``deletion``, ``deletion_ci95_low``, ``deletion_ci95_high``), the costs, then ``best``: the
        columns (metric or cost names, space-separated) where the row holds the best value."""
        out = []
        for key, rows in self.table.groupby([*IDENTITY, "kind"], sort=False):
            row = dict(zip([*IDENTITY, "kind"], key, strict=True))
            first = rows.iloc[0]
            row["images"] = first["images"]
            values = rows.set_index("column")
            for column in self.metrics:
                for suffix, name in (("", "mean"), ("_ci95_low", "ci95_low"), ("_ci95_high", "ci95_high")):
                    row[column + suffix] = values[name].get(column, math.nan)
            row |= {column: values["mean"].get(column, math.nan) for column in self.costs}
            row["best"] = " ".join(rows.loc[rows["best"], "column"])
            row["run_dir"], row["finished"] = first["run_dir"], first["finished"]
            out.append(row)
        return pd.DataFrame(out)

    def pivot(self, by: str) -> pd.DataFrame:
        """Per metric, one row per explainer of the other identity keys, a column group per value of
        ``by`` (``resnet18``, ``resnet18_ci95_low``, ``resnet18_ci95_high``, ...), then ``best``: the
        values of ``by`` under which the row is the best method, separated by ``; `` (a variant can
        hold spaces)."""
        if by not in BY_KEYS:
            raise LeaderboardError(f"cannot pivot by {by!r}; valid keys: {', '.join(BY_KEYS)}")
        rest = [key for key in IDENTITY if key != by]
        values = _unique(self.table[by])
        out = []
        for column in [*self.metrics, *self.costs]:
            part = self.table[self.table["column"] == column]
            for key, rows in part.groupby([*rest, "kind"], sort=False):
                row = {"metric": column, **dict(zip([*rest, "kind"], key, strict=True))}
                cells = rows.set_index(by)
                for value in values:
                    row[value] = cells["mean"].get(value, math.nan)
                    row |= {f"{value}_{name}": cells[name].get(value, math.nan) for name in INTERVAL}
                row["best"] = PIVOT_SEPARATOR.join(cells.index[cells["best"]])
                out.append(row)
        return pd.DataFrame(out)


def _requested(available: list[str], wanted: list[str] | None) -> list[str]:
    """The metric columns asked for by ``--metrics``: column names, or metric names (all their columns)."""
    if not wanted:
        return available
    out = []
    for name in wanted:
        columns = [c for c in available if c == name or (name in METRICS and c in _columns_of(name))]
        if not columns:
            raise LeaderboardError(f"no metric {name!r} in these runs; valid: {', '.join(available)}")
        out += columns
    return _unique(out)


def _columns_of(metric: str) -> set[str]:
    cls = METRICS[metric]
    return {*cls.names, *cls.derived}


def build(runs: Iterable[FinishedRun], metrics: list[str] | None = None) -> Leaderboard:
    """The leaderboard of ``runs`` (see the module docstring); ``metrics`` limits the metric columns
    (and the time columns to those of the metrics kept)."""
    entries, notes = select(runs)
    scored = _unique(c for e in entries for c in (*e.run.scores, *e.run.derived))
    chosen = _requested(scored, metrics)
    left_out = {f"{METRIC_SECONDS}{m}" for m in METRICS if not _columns_of(m) & set(chosen)}  # their time too
    costs = _unique(m for e in entries for m in e.run.summary["metric"] if m not in {*scored, *left_out})
    lower = set().union(*(e.run.lower_is_better for e in entries))

    records = []
    groups: dict[tuple[str, str, str], list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.group, []).append(entry)
    for group, members in groups.items():
        explainers = [(e.method, "method", e.run, e.run.method) for e in members]
        newest, baselines = group_baselines(members)
        explainers += [(b, "baseline", newest, b) for b in baselines]
        for label, kind, run, explainer in explainers:
            summary = run.summary_of(explainer).set_index("metric")
            identity = dict(zip(IDENTITY, (*group, label), strict=True))
            common = {"kind": kind, "images": int(summary["n"].max()), "run_dir": str(run.folder)}
            common["finished"] = run.info.get("finished", "")
            for column in [*chosen, *costs]:
                if column in summary.index:
                    stats = summary.loc[column, ["mean", *INTERVAL]].to_dict()
                    records.append(identity | common | {"column": column} | stats)
    table = pd.DataFrame(records)
    board = Leaderboard(table, entries, chosen, costs, lower, notes)
    table["best"] = _best(table, board)
    return board


def _best(table: pd.DataFrame, board: Leaderboard) -> pd.Series:
    """True where a method row holds the best mean of its group and column (ties: all of them)."""
    methods = table[table["kind"] == "method"]
    sign = methods["column"].map(lambda c: 1.0 if board.better_is_lower(c) else -1.0)
    oriented = methods["mean"] * sign  # lower is better now
    top = oriented.groupby([methods[k] for k in (*GROUP, "column")]).transform("min")
    return (oriented == top).reindex(table.index, fill_value=False)


# ----- Markdown -----


def number(value: float) -> str:
    """A value for a table: 3 decimals in [0.001, 1000), none from 1000, 3 significant digits below
    0.001; n/a for NaN."""
    if value != value:
        return "n/a"
    if abs(value) >= 1e3:
        return f"{value:.0f}"
    return f"{value:.3f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.3g}"


def interval(mean: float, low: float, high: float) -> str:
    """``0.204 [0.136, 0.280]``"""
    return number(mean) if low != low else f"{number(mean)} [{number(low)}, {number(high)}]"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def header(board: Leaderboard, column: str) -> str:
    """A column's heading: the metric with its direction, or the cost in words."""
    if column in board.metrics:
        return f"{column} {'↓' if column in board.lower else '↑'}"
    if column.startswith("seconds_"):
        return f"s/image {column.removeprefix('seconds_')}"
    if column == "peak_memory_mb":
        return "peak memory (MB)"
    return column.replace("_", " ").replace("passes ", "passes: ")


def _cell(row: pd.Series, board: Leaderboard) -> str:
    """A metric's mean with its interval, a cost's mean alone; bold when best."""
    costly = row["column"] in board.costs
    text = number(row["mean"]) if costly else interval(row["mean"], row["ci95_low"], row["ci95_high"])
    return f"**{text}**" if row["best"] else text


def _row_label(method: str, kind: str) -> str:
    return f"{method} *(baseline)*" if kind == "baseline" else method


def group_title(group: tuple[str, ...]) -> str:
    return " / ".join(filter(None, group))


def to_markdown(board: Leaderboard) -> str:
    """One table per (model, dataset, variant): method rows then baseline rows, best values in bold."""
    columns = [*board.metrics, *board.costs]
    parts = [
        "Mean [95% bootstrap interval] per metric (↑ higher is better, ↓ lower is better), then the cost per "
        "image; **bold**: the best method of the table in that column. Baselines are sanity rows (scored on "
        "the same images and classes), not ranked."
    ]
    for group, rows in board.table.groupby(list(GROUP), sort=False):
        body = []
        for (method, kind), cells in rows.groupby(["method", "kind"], sort=False):
            by_column = {row["column"]: _cell(row, board) for _, row in cells.iterrows()}
            values = [by_column.get(column, "") for column in columns]
            body.append([_row_label(method, kind), str(cells["images"].iloc[0]), *values])
        table = markdown_table(["method", "images", *(header(board, c) for c in columns)], body)
        parts.append(f"### {group_title(group)}\n\n{table}")
    if board.notes:
        parts.append("Notes:\n\n" + "\n".join(f"- {note}" for note in board.notes))
    return "\n\n".join(parts) + "\n"


def pivot_markdown(board: Leaderboard, by: str) -> str:
    """One table per metric: explainer rows, one column per value of ``by``; bold: the best method."""
    table = board.pivot(by)
    values = _unique(board.table[by])
    rest = [key for key in IDENTITY if key != by and key != "method" and board.table[key].nunique() > 1]
    parts = [f"Leaderboard by {by}: one table per metric, a column per {by}; **bold**: the best method there."]
    for column, rows in table.groupby("metric", sort=False):
        body = []
        for _, row in rows.iterrows():
            best = set(row["best"].split(PIVOT_SEPARATOR))
            if column in board.costs:
                cells = [number(row[v]) for v in values]
            else:
                cells = [interval(row[v], row[f"{v}_ci95_low"], row[f"{v}_ci95_high"]) for v in values]
            cells = [f"**{c}**" if v in best else c for c, v in zip(cells, values, strict=True)]
            body.append([*(str(row[k]) for k in rest), _row_label(row["method"], row["kind"]), *cells])
        parts.append(f"### {header(board, column)}\n\n{markdown_table([*rest, 'method', *values], body)}")
    return "\n\n".join(parts) + "\n"
