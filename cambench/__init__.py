"""cambench: benchmark and evaluate Class Activation Mapping methods on CNN classifiers.

The Python API (:mod:`cambench.api`)::

    import cambench
    cam = cambench.method("gradcam", model, target_layer="layer4")   # any CAM method, any classifier
    maps = cam(images).maps                                           # (N, H, W) in [0, 1]
    scores = cambench.score(model, images, maps, metrics=["deletion_insertion"])  # per image
    rows, summary = cambench.benchmark(model, data, methods=["gradcam", "scorecam"])  # the whole loop

``python -m cambench`` is the Hydra app over the same API. The API is imported on first use, so that
``import cambench`` stays light.
"""

from importlib import metadata
from typing import Any

from cambench.errors import CambenchError

try:
    __version__ = metadata.version("cambench")
except metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

API = ("method", "score", "benchmark", "BenchmarkResult", "load_model", "load_dataset")
__all__ = ["CambenchError", "__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        from cambench import api

        return getattr(api, name)
    raise AttributeError(f"module 'cambench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
