"""Metrics, registered under their config names. Importing this package registers them all."""

from cambench.metrics import deletion_insertion  # noqa: F401  (registers the metric)
from cambench.metrics.base import METRICS, Metric, MetricInput, Scorer, build_metric, register

__all__ = ["METRICS", "Metric", "MetricInput", "Scorer", "build_metric", "register"]
