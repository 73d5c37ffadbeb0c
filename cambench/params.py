"""Hyper-parameters of methods and metrics, declared once per class as a dataclass.

Every method and metric class has a nested ``Params`` dataclass (deriving from :class:`Params`, and
from its parent class's ``Params`` where the class derives from another method or metric): one
typed field per hyper-parameter with its default, and :meth:`Params.check` for the values it cannot
take. That declaration is the only one: the class's constructor, the config schema that Hydra's
YAML is merged into, the error messages, the method's ``__signature__`` (what ``help()`` shows) and
the test that checks every YAML of ``conf/method`` and ``conf/metrics`` all read it.

:func:`validate` merges given values into the declaration through OmegaConf, as the command line
does, so a wrong name or type is the same one-line error from Python and from the command line.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from cambench.errors import CambenchError

P = TypeVar("P", bound="Params")
OMEGACONF_MISSING = "???"  # omegaconf.MISSING: a value the config must set


@dataclass
class Params:
    """Base of every ``Params`` declaration: no parameters."""

    def check(self) -> None:
        """Raise the owner's error (``MethodError``, ``MetricError``) for values it cannot use; the types
        are checked before, when the values are merged."""


def fields(params: type[Params]) -> dict[str, tuple[Any, Any]]:
    """{name: (type, default)} of a declaration; the default is ``dataclasses.MISSING`` where a value
    must be given (``method=saved``'s path)."""
    hints = typing.get_type_hints(params)
    out = {}
    for f in dataclasses.fields(params):
        if f.default is not dataclasses.MISSING and f.default != OMEGACONF_MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        out[f.name] = (hints.get(f.name, Any), default)
    return out


def describe(params: type[Params]) -> str:
    """``name: type = default`` of every parameter, for error messages ("none" without parameters)."""

    def shown(tp: Any) -> str:
        return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")

    items = [
        f"{name}: {shown(tp)}" + ("" if default is dataclasses.MISSING else f" = {default!r}")
        for name, (tp, default) in fields(params).items()
    ]
    return ", ".join(items) or "none"


def validate(params: type[P], values: Mapping[str, Any], where: str, error: type[CambenchError], prefix: str = "") -> P:
    """``values`` merged into the declaration ``params`` (types checked and converted as on the command line),
    then value-checked by :meth:`Params.check`; ``error`` with one line that starts with ``where`` otherwise
    (``prefix``: the config path of the parameters, ``method.`` say, to name a missing one)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(params), dict(values))
    except ConfigKeyError as err:
        raise error(f"{where}: unknown parameter {err.key!r} (valid parameters: {describe(params)})") from None
    except OmegaConfBaseException as err:
        message = str(getattr(err, "msg", err)).splitlines()[0]
        key = getattr(err, "full_key", None)
        raise error(f"{where}: {f'{key}: ' if key else ''}{message} (valid parameters: {describe(params)})") from None
    if missing := sorted(OmegaConf.missing_keys(merged)):
        raise error(f"{where}: set {', '.join(prefix + name for name in missing)}")
    out = OmegaConf.to_object(merged)
    try:
        out.check()
    except CambenchError as err:
        raise error(f"{where}: {err}") from None
    return out


def validate_schema(schema: type, values: Mapping[str, Any], where: str, error: type[CambenchError]) -> Any:
    """``values`` merged into a config schema (a dataclass such as a dataset's), as a DictConfig; ``error`` with
    one line naming the problem otherwise."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), dict(values))
    except OmegaConfBaseException as err:
        message = str(getattr(err, "msg", err)).splitlines()[0]
        raise error(f"{where}: {message}") from None
    if missing := sorted(OmegaConf.missing_keys(merged)):
        raise error(f"{where}: set {', '.join(missing)}")
    return merged


def as_dict(params: Params) -> dict[str, Any]:
    """The values of a declaration's instance, by name."""
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}


def signature(
    params: type[Params], leading: list[inspect.Parameter], trailing: list[inspect.Parameter] = ()
) -> inspect.Signature:
    """A constructor's signature: the ``leading`` parameters, every hyper-parameter as keyword-only, then the
    ``trailing`` (keyword-only) ones."""
    keyword = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=inspect.Parameter.empty if default is dataclasses.MISSING else default,
            annotation=tp,
        )
        for name, (tp, default) in fields(params).items()
    ]
    return inspect.Signature([*leading, *keyword, *trailing])
