"""CAM methods, registered under their config names. Importing this package registers them all
(every module of the package except ``base``): the CAM methods in ``METHODS``, the other sources of
maps (``saved``: stored maps) in ``SOURCES``. Every method class is importable from here by its class
name (``from cambench.methods import GradCAMPlusPlus``), as is ``FunctionMethod`` (maps of any callable)."""

import importlib
import pkgutil

from cambench.methods.base import (
    METHODS,
    SOURCES,
    CAMMethod,
    CAMOutput,
    MethodError,
    all_methods,
    build_method,
    method_class,
    register,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

from cambench.methods.external import FunctionMethod  # noqa: E402 (after the registry is filled)

CLASSES = {cls.__name__: cls for cls in all_methods().values()}
globals().update(CLASSES)

__all__ = [
    "METHODS",
    "SOURCES",
    "CAMMethod",
    "CAMOutput",
    "MethodError",
    "all_methods",
    "build_method",
    "method_class",
    "FunctionMethod",
    "register",
    *CLASSES,
]
