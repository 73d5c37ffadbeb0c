"""Hyper-parameters of methods and metrics, read from their ``__init__`` signatures, and the
structured-config schema that validates them (unknown names and wrong types fail at start)."""

from __future__ import annotations

import inspect
import typing
from dataclasses import field, make_dataclass
from typing import Any

CONTEXT_ARGUMENTS = ("engine", "ctx")  # given by the runner, not by the config


def parameters(cls: type) -> dict[str, tuple[Any, Any]]:
    """{name: (type, default)} of the keyword arguments of ``cls.__init__`` that configs may set."""
    hints = typing.get_type_hints(cls.__init__)
    out = {}
    for name, p in list(inspect.signature(cls.__init__).parameters.items())[1:]:
        if name in CONTEXT_ARGUMENTS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        out[name] = (hints.get(name, Any), p.default)
    return out


def schema(cls: type, extra: dict[str, tuple[Any, Any]] | None = None) -> type:
    """A dataclass with one typed field per parameter (and ``extra`` fields), for OmegaConf to merge into."""
    spec = {**(extra or {}), **parameters(cls)}
    return make_dataclass(
        f"{cls.__name__}Params",
        [(name, tp, field(default=default)) for name, (tp, default) in spec.items()],
    )
