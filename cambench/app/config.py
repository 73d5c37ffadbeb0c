"""Structured-config schemas and the start-up check of a composed config.

Hydra composes ``conf/``; :func:`validate` merges each group into its schema (catching unknown
keys and wrong types) and checks every name against its registry, so a typo fails before any
work with a one-line message that lists the valid choices. Method and metric parameters are
checked against the ``Params`` declaration of their class (names, types and defaults), then
against its ``check`` (values). The runner's schema, :class:`~cambench.effects.RunnerConfig`, is
declared in :mod:`cambench.effects` with the effect of each key on the results (the leaderboard reads
it too); the datasets' schemas are in :mod:`cambench.data.registry`. The files of ``conf/method``,
``conf/metrics`` (presets aside), ``conf/model``, ``conf/dataset`` and ``conf/runner`` hold their
schema's keys at their defaults (tests/test_declarations.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cambench import params
from cambench.data.registry import DATASETS
from cambench.device import AUTOCAST_DTYPES
from cambench.effects import RunnerConfig
from cambench.errors import CambenchError
from cambench.methods import METHODS, all_methods
from cambench.metrics import METRICS
from cambench.models.build import available_models


class ConfigError(CambenchError):
    pass


@dataclass
class ModelConfig:
    name: str = MISSING
    weights: str = "auto"  # auto | reference | random | checkpoint path | torchvision weights name
    target_layer: Any = None  # dotted module path, a list of them (multi-layer methods), or null: the default


GROUP_SCHEMAS = {"model": ModelConfig, "runner": RunnerConfig}
CHOICES = {"runner.target": ("prediction", "label"), "runner.autocast": tuple(AUTOCAST_DTYPES)}
AT_LEAST_ONE = ("batch_size", "num_images", "bootstrap")


def _merge(schema_cls: type, node: DictConfig, where: str, valid: str | None = None) -> DictConfig:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema_cls), node)
    except OmegaConfBaseException as err:
        message = str(getattr(err, "msg", err)).splitlines()[0]
        valid = valid or ", ".join(f.name for f in fields(schema_cls))
        raise ConfigError(f"{where}: {message} (valid keys: {valid})") from None
    if missing := sorted(OmegaConf.missing_keys(merged)):
        raise ConfigError(f"{where}: set {', '.join(f'{where}.{k}' for k in missing)}")
    return merged


def _check_choice(value: object, valid: list | tuple, what: str) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {what} {value!r}; valid choices: {', '.join(map(str, valid))}")


def _params(cls: type, node: DictConfig | None, where: str) -> DictConfig:
    """``node`` (without a ``name`` key) validated against the ``Params`` declaration of ``cls``
    (:func:`cambench.params.validate`), as a config of every parameter."""
    values = {k: v for k, v in (OmegaConf.to_container(node) if node is not None else {}).items() if k != "name"}
    return OmegaConf.structured(params.validate(cls.Params, values, where, ConfigError, f"{where}."))


def _runner(node: DictConfig) -> DictConfig:
    runner = _merge(RunnerConfig, node, "runner")
    for key in AT_LEAST_ONE:
        if runner[key] is not None and runner[key] < 1:
            raise ConfigError(f"runner.{key} must be >= 1, got {runner[key]}")
    chunk = runner.score_batch_size
    if not (chunk == "auto" or (isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 1)):
        raise ConfigError(f"runner.score_batch_size must be auto or an integer >= 1, got {chunk!r}")
    device = runner.device
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise ConfigError(f"unknown runner.device {device!r}; valid choices: auto, cpu, cuda, cuda:N")
    return runner


def target_layers(value: Any) -> list[str] | None:
    """``model.target_layer`` as a list of paths (None: the model's default)."""
    if value is None:
        return None
    layers = list(value) if isinstance(value, ListConfig | list | tuple) else [value]
    if not layers or not all(isinstance(layer, str) and layer for layer in layers):
        raise ConfigError(f"model.target_layer must be a module path or a list of them, got {value!r}")
    return layers


def validate(cfg: DictConfig) -> DictConfig:
    """Return ``cfg`` with every group merged into its schema; raise ConfigError on any problem."""
    out = {"model": _merge(ModelConfig, cfg.model, "model"), "runner": _runner(cfg.runner)}
    _check_choice(out["model"].name, available_models(), "model.name")
    target_layers(out["model"].target_layer)
    for key, valid in CHOICES.items():
        group, name = key.split(".")
        _check_choice(out[group][name], valid, key)

    methods = all_methods()
    _check_choice(cfg.method.get("name"), sorted(methods), "method")
    for baseline in out["runner"].baselines:
        _check_choice(baseline, sorted(METHODS), "runner.baselines entry")
    out["method"] = OmegaConf.merge({"name": cfg.method.name}, _params(methods[cfg.method.name], cfg.method, "method"))

    _check_choice(cfg.dataset.get("name"), sorted(DATASETS), "dataset")
    out["dataset"] = _merge(DATASETS[cfg.dataset.name].schema, cfg.dataset, "dataset")

    if not cfg.metrics:
        raise ConfigError("no metrics selected; choose a metrics config, e.g. metrics=default")
    for name in out["runner"].add_when_available:
        _check_choice(name, sorted(METRICS), "runner.add_when_available entry")
    given = DATASETS[cfg.dataset.name].capabilities(out["dataset"])
    added = [n for n in out["runner"].add_when_available if n not in cfg.metrics and METRICS[n].requires <= given]
    metrics, writers = {}, {}
    for name, node in [*cfg.metrics.items(), *((n, None) for n in added)]:
        _check_choice(name, sorted(METRICS), "metric")
        metrics[name] = _params(METRICS[name], node, f"metrics.{name}")
        for column in (*METRICS[name].columns(OmegaConf.to_object(metrics[name])), *METRICS[name].derived):
            if column in writers:
                raise ConfigError(
                    f"metrics {writers[column]} and {name} both write {column}: keep one of them "
                    f"(drop metrics.{name} with ~metrics.{name})"
                )
            writers[column] = name
    out["metrics"] = metrics
    return OmegaConf.create({key: out[key] for key in ("model", "method", "dataset", "metrics", "runner")})


def method_params(cfg: DictConfig) -> dict[str, Any]:
    """The method's hyper-parameters of a validated config (everything but its name)."""
    return {k: v for k, v in OmegaConf.to_container(cfg.method).items() if k != "name"}
