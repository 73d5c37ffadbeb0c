"""CAM methods, registered under their config names. Importing this package registers them all
(every module of the package except ``base``): the CAM methods in ``METHODS``, the other sources of
maps (``saved``: stored maps) in ``SOURCES``."""

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

__all__ = [
    "METHODS",
    "SOURCES",
    "CAMMethod",
    "CAMOutput",
    "MethodError",
    "all_methods",
    "build_method",
    "method_class",
    "register",
]
