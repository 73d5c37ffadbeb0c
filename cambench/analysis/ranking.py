"""How reliable a leaderboard's ranking of the methods is.

For the methods of one (model, dataset, variant) group, scored on the same images (paired by
image id), per metric: the ranking by mean (1 = best by the metric's direction; tied means share
the better rank) and its bootstrap stability. The images are resampled with replacement (seeded);
in each resample the methods are ranked again; per method, the share of resamples in which it
keeps its full-sample rank, and per metric the share in which the whole ranking is unchanged. A
share near 1 says the images decide the order; near 1 / (number of methods) says they do not.

Kendall's tau-b (scipy) between the rankings that the metrics give (oriented by direction, so +1
means the same order from better to worse and -1 the reverse), and between protocol variants of
the same metric (groups that differ only by their variant). Only per-image scores are ranked
(derived values such as ``adcc_of_means`` have no per-image rows).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from cambench.analysis.leaderboard import GROUP, Entry, group_title, markdown_table, number
from cambench.analysis.statistics import resample_rows

RESAMPLES = 1000
CHUNK = 2**24  # elements of one (methods, resamples, images) gather


def ranks(means: Tensor, lower: bool) -> Tensor:
    """Competition ranks along the last dimension: 1 + the number of strictly better means (ties
    share the better rank); a NaN mean ranks last."""
    oriented = (-means if lower else means).nan_to_num(nan=-torch.inf)
    return 1 + (oriented.unsqueeze(-2) > oriented.unsqueeze(-1)).sum(-1)


def resampled_means(scores: Tensor, index: Tensor) -> Tensor:
    """(methods, resamples) means of ``scores`` (methods, N) over the rows ``index`` (resamples, N),
    NaNs skipped; gathered in chunks of resamples to bound memory."""
    step = max(1, CHUNK // scores.numel())
    return torch.cat([scores[:, part].nanmean(-1) for part in index.split(step)], dim=1)


@dataclass
class Stability:
    ranks: Tensor  # (methods,) full-sample ranks
    keeps: Tensor  # (methods,) share of resamples in which the method has its full-sample rank
    unchanged: float  # share of resamples in which the whole ranking is the full-sample one


def stability(scores: Tensor, lower: bool, resamples: int = RESAMPLES, seed: int = 0) -> Stability:
    """Ranking of the methods' scores (methods, N) on paired images and its bootstrap stability."""
    scores = scores.double()
    full = ranks(scores.nanmean(1), lower)
    index = resample_rows(scores.shape[1], resamples, seed)
    same = ranks(resampled_means(scores, index).T, lower) == full  # (resamples, methods)
    return Stability(full, same.double().mean(0), same.all(1).double().mean().item())


def agreement(means: pd.DataFrame, lower: set[str]) -> pd.DataFrame:
    """Kendall's tau-b (scipy, through pandas) between the columns of ``means`` (methods x metrics),
    each oriented so that higher is better: a metrics x metrics table."""
    oriented = means * [-1.0 if column in lower else 1.0 for column in means.columns]
    return oriented.corr(method="kendall")


@dataclass
class Ranking:
    stability: pd.DataFrame  # per group, metric and method: mean, rank, keeps_rank, ranking_unchanged
    metric_tau: pd.DataFrame  # per group: metric_a, metric_b, tau
    variant_tau: pd.DataFrame  # per (model, dataset) and metric: variant_a, variant_b, methods, tau
    notes: list[str] = field(default_factory=list)
    means: dict[tuple[str, str, str], pd.DataFrame] = field(default_factory=dict)  # group -> methods x metrics


def _paired(members: list[Entry], notes: list[str]) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """The methods' per-image rows on the image ids all of them scored, and those ids (in the first
    run's order); a note when some ids were dropped."""
    rows = {e.method: e.run.rows() for e in members}
    common = set.intersection(*(set(r.index) for r in rows.values()))
    ids = [i for i in next(iter(rows.values())).index if i in common]
    if any(len(r) != len(ids) for r in rows.values()):
        counts = ", ".join(f"{method} {len(r)}" for method, r in rows.items())
        notes.append(
            f"{group_title(members[0].group)}: the methods scored different images ({counts}); ranked on the "
            f"{len(ids)} they share (rerun with the same dataset, runner.num_images and runner.seed to pair all)"
        )
    return rows, ids


def rank(entries: list[Entry], metrics: list[str] | None = None, resamples: int = RESAMPLES, seed: int = 0) -> Ranking:
    """Ranking, stability and agreement of the methods of every group (see the module docstring)."""
    groups: dict[tuple[str, str, str], list[Entry]] = {}
    for entry in entries:
        groups.setdefault(entry.group, []).append(entry)
    out = Ranking(pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    stable, taus = [], []
    for group, members in groups.items():
        if len(members) < 2:
            out.notes.append(f"{group_title(group)}: one method only ({members[0].method}), nothing to rank")
            continue
        rows, ids = _paired(members, out.notes)
        if len(ids) < 2:
            out.notes.append(f"{group_title(group)}: fewer than 2 images in common, not ranked")
            continue
        scores = [m for m in members[0].run.scores if all(m in e.run.scores for e in members)]
        scores = [m for m in scores if metrics is None or m in metrics]
        lower = set().union(*(e.run.lower_is_better for e in members))
        identity = dict(zip(GROUP, group, strict=True))
        means = {}
        for metric in scores:
            matrix = torch.tensor(np.stack([rows[method].loc[ids, metric].to_numpy(float) for method in rows]))
            result = stability(matrix, metric in lower, resamples, seed)
            means[metric] = matrix.double().nanmean(1).numpy()
            stable += [
                identity
                | {"metric": metric, "lower_is_better": metric in lower, "method": method, "mean": mean}
                | {"rank": int(r), "keeps_rank": float(k), "ranking_unchanged": result.unchanged}
                | {"images": len(ids), "resamples": resamples}
                for method, mean, r, k in zip(rows, means[metric], result.ranks, result.keeps, strict=True)
            ]
        out.means[group] = pd.DataFrame(means, index=list(rows))
        tau = agreement(out.means[group], lower)
        pairs = itertools.product(tau.columns, tau.columns)
        taus += [identity | {"metric_a": a, "metric_b": b, "tau": tau.loc[a, b]} for a, b in pairs]
    out.stability, out.metric_tau = pd.DataFrame(stable), pd.DataFrame(taus)
    out.variant_tau = _variant_tau(out.means)
    return out


def _variant_tau(means: dict[tuple[str, str, str], pd.DataFrame]) -> pd.DataFrame:
    """Kendall's tau between the rankings of the same metric under two variants of one (model, dataset),
    on the methods both variants ran (pairs of variants sharing fewer than 2 methods are left out)."""
    out = []
    for (a, ma), (b, mb) in itertools.combinations(means.items(), 2):
        if a[:2] != b[:2]:
            continue
        methods = [m for m in ma.index if m in mb.index]
        if len(methods) < 2:  # nothing to order
            continue
        for metric in [m for m in ma.columns if m in mb.columns]:
            pair = pd.DataFrame({"a": ma.loc[methods, metric], "b": mb.loc[methods, metric]})
            tau = pair.corr(method="kendall").loc["a", "b"]
            out.append(
                {"model": a[0], "dataset": a[1], "metric": metric, "variant_a": a[2], "variant_b": b[2]}
                | {"methods": len(methods), "tau": tau}
            )
    return pd.DataFrame(out)


# ----- Markdown -----


def _ordering(rows: pd.DataFrame) -> str:
    """``1. gradcampp (0.98), 2. gradcam (0.95)``: best first, each with the share keeping its rank."""
    rows = rows.sort_values("rank", kind="stable")
    return ", ".join(f"{r['rank']}. {r['method']} ({r['keeps_rank']:.2f})" for _, r in rows.iterrows())


def to_markdown(ranking: Ranking, lower: set[str]) -> str:
    """Per group: the ranking of each metric with its stability, the metrics x metrics tau table;
    then the tau between variants."""

    def name(metric: str) -> str:
        return f"{metric} {'↓' if metric in lower else '↑'}"

    parts = [
        "Per metric: the methods best first (rank by mean; ties share a rank), each with the share of bootstrap "
        "resamples of the images in which it keeps that rank, and the share in which the whole ranking is unchanged. "
        "Then Kendall's tau between the rankings of the metrics (oriented: 1 = the same order from better to worse)."
    ]
    if not ranking.stability.empty:
        for group, rows in ranking.stability.groupby(list(GROUP), sort=False):
            first = rows.iloc[0]
            body = [
                [name(metric), _ordering(part), f"{part['ranking_unchanged'].iloc[0]:.2f}"]
                for metric, part in rows.groupby("metric", sort=False)
            ]
            table = markdown_table(["metric", "ranking (share keeping its rank)", "whole ranking unchanged"], body)
            tau = ranking.metric_tau[(ranking.metric_tau[list(GROUP)] == list(group)).all(axis=1)]
            matrix = tau.pivot(index="metric_a", columns="metric_b", values="tau")
            order = list(dict.fromkeys(tau["metric_a"]))
            grid = [[name(a), *(number(matrix.loc[a, b]) for b in order)] for a in order]
            parts.append(
                f"### {group_title(group)}\n\n{first['images']} images paired by id, {first['resamples']} resamples."
                f"\n\n{table}\n\nKendall's tau between the metrics' rankings:\n\n"
                + markdown_table(["", *map(name, order)], grid)
            )
    if not ranking.variant_tau.empty:
        body = [
            [f"{r.model} / {r.dataset}", name(r.metric), r.variant_a, r.variant_b, str(r.methods), number(r.tau)]
            for r in ranking.variant_tau.itertuples()
        ]
        parts.append(
            "### Between protocol variants\n\nKendall's tau between the rankings of a metric under two variants "
            "(the methods both ran):\n\n"
            + markdown_table(["model / dataset", "metric", "variant a", "variant b", "methods", "tau"], body)
        )
    if ranking.notes:
        parts.append("Notes:\n\n" + "\n".join(f"- {note}" for note in ranking.notes))
    return "\n\n".join(parts) + "\n"
