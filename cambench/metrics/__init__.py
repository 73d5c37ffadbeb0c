"""Metrics, registered under their config names. Importing this package registers them all
(every module of the package except ``base``); every metric class is importable from here by its class
name (``from cambench.metrics import DeletionInsertion``)."""

import importlib
import pkgutil

from cambench.metrics.base import (
    CAPABILITIES,
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

CLASSES = {cls.__name__: cls for cls in METRICS.values()}
globals().update(CLASSES)

__all__ = [
    "CAPABILITIES",
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
    *CLASSES,
]
