"""Metrics, registered under their config names. Importing this package registers them all
(every module of the package except ``base``)."""

import importlib
import pkgutil

from cambench.metrics.base import (
    METRICS,
    Metric,
    MetricContext,
    MetricError,
    MetricInput,
    build_metric,
    metric_class,
    metric_columns,
    missing_capabilities,
    register,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "METRICS",
    "Metric",
    "MetricContext",
    "MetricError",
    "MetricInput",
    "build_metric",
    "metric_class",
    "metric_columns",
    "missing_capabilities",
    "register",
]
