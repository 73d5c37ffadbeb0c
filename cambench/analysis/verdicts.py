"""The sanity verdicts of a run: the method's summary beside its baselines, and the sanity checks failed.

A sanity baseline (Fake-CAM, Center-CAM, ...) explains the same images for the same classes with the
same metrics; a metric on which a baseline scores at least as well as the method (by the metric's
direction) is flagged, and so is an explainer whose mean crosses a sanity check's threshold
(``Metric.fails_at``: model randomisation, class sensitivity). The flags go into the summary's ``flag``
column and, as one line, into the results table.
"""

from __future__ import annotations

import pandas as pd

from cambench.metrics import Metric


def beside_baselines(
    summaries: dict[str, pd.DataFrame], method: str, metrics: dict[str, Metric]
) -> tuple[pd.DataFrame, str]:
    """The method's summary with each baseline's mean in a column of its own, and ``flag`` naming
    the baselines that score at or above the method (by the metric's direction) and the explainers
    that fail a sanity check (:func:`sanity_failures`); also the flags as one line
    (``fakecam: average_drop, complexity; edgecam fails: randomisation_spearman``) for the results table."""
    summary = summaries[method].copy()
    lower = set().union(*(m.lower_is_better for m in metrics.values()))
    scored = {name for m in metrics.values() for name in (*m.names, *m.derived)}
    flags = {row.metric: [] for row in summary.itertuples() if row.metric in scored}
    for name, other in summaries.items():
        if name == method:
            continue
        summary[name] = summary["metric"].map(other.set_index("metric")["mean"])
        for row in summary.itertuples():
            if row.metric in flags:
                theirs, ours = getattr(row, name), row.mean
                if (theirs <= ours) if row.metric in lower else (theirs >= ours):
                    flags[row.metric].append(name)
    failures = sanity_failures(summaries, metrics)
    label = {name: "method" if name == method else name for name in summaries}
    summary["flag"] = summary["metric"].map(
        lambda metric: " ".join(
            [
                *(f"{b} >= method" for b in flags.get(metric, [])),
                *(f"{label[name]} fails ({verdict})" for name, verdict in failures.get(metric, {}).items()),
            ]
        )
    )
    by_baseline = {b: [m for m, names in flags.items() if b in names] for b in summaries if b != method}
    failed = {label[n]: [m for m, by in failures.items() if n in by] for n in summaries}
    line = "; ".join(
        [
            *(f"{b}: {', '.join(ms)}" for b, ms in by_baseline.items() if ms),
            *(f"{n} fails: {', '.join(ms)}" for n, ms in failed.items() if ms),
        ]
    )
    return summary, line


def sanity_failures(summaries: dict[str, pd.DataFrame], metrics: dict[str, Metric]) -> dict[str, dict[str, str]]:
    """Sanity checks failed (``Metric.fails_at``): column -> explainer -> ``1.000 >= 0.9``, where the
    explainer's mean is at or past the threshold by the column's direction."""
    thresholds = {
        column: (limit, column in m.lower_is_better) for m in metrics.values() for column, limit in m.fails_at.items()
    }
    out: dict[str, dict[str, str]] = {}
    for name, summary in summaries.items():
        means = summary.set_index("metric")["mean"]
        for column, (limit, lower) in thresholds.items():
            mean = means.get(column, float("nan"))
            if (mean >= limit) if lower else (mean <= limit):
                out.setdefault(column, {})[name] = f"{mean:.3f} {'>=' if lower else '<='} {limit:g}"
    return out
