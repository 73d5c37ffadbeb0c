"""Structured-config schemas and the start-up check of a composed config.

Hydra composes ``conf/``; :func:`validate` merges each group into its schema (catching unknown
keys and wrong types) and checks every name against its registry, so a typo fails before any
work with a message that lists the valid choices.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cambench.data.registry import DATASETS
from cambench.device import AUTOCAST_DTYPES
from cambench.methods import METHODS
from cambench.metrics import METRICS
from cambench.models.build import available_models


class ConfigError(ValueError):
    pass


@dataclass
class ModelConfig:
    name: str = MISSING
    weights: str = "auto"  # auto | reference | random | checkpoint path | torchvision weights name
    target_layer: str | None = None  # dotted module path; null: the family's default


@dataclass
class MethodConfig:
    name: str = MISSING


@dataclass
class RunnerConfig:
    batch_size: int = 16
    num_images: int | None = None  # null: the whole dataset
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    autocast: str | None = None  # null | bf16 | fp16
    channels_last: bool = True  # NHWC memory format: faster convolutions on CPUs and tensor cores
    target: str = "prediction"  # prediction | label
    seed: int = 0
    score_batch_size: int = 256  # forward batch of the metrics' perturbed copies
    num_workers: int = 0
    bootstrap: int = 1000  # resamples of the 95% bootstrap interval
    results_table: str = "results/runs.csv"  # a summary row is appended per run
    progress: bool = True


GROUP_SCHEMAS = {"model": ModelConfig, "method": MethodConfig, "runner": RunnerConfig}
CHOICES = {"runner.target": ("prediction", "label"), "runner.autocast": tuple(AUTOCAST_DTYPES)}


def _merge(schema: type, node: DictConfig, where: str) -> DictConfig:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as err:
        valid = ", ".join(f.name for f in fields(schema))
        raise ConfigError(f"{where}: {err.msg if hasattr(err, 'msg') else err} (valid keys: {valid})") from None
    if missing := sorted(OmegaConf.missing_keys(merged)):
        raise ConfigError(f"{where}: set {', '.join(f'{where}.{k}' for k in missing)}")
    return merged


def _check_choice(value: object, valid: list | tuple, what: str) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {what} {value!r}; valid choices: {', '.join(map(str, valid))}")


def validate(cfg: DictConfig) -> DictConfig:
    """Return ``cfg`` with every group merged into its schema; raise ConfigError on any problem."""
    out = {key: _merge(schema, cfg[key], key) for key, schema in GROUP_SCHEMAS.items()}
    _check_choice(out["method"].name, sorted(METHODS), "method")
    _check_choice(out["model"].name, available_models(), "model.name")
    for key, valid in CHOICES.items():
        group, name = key.split(".")
        _check_choice(out[group][name], valid, key)
    device = out["runner"].device
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise ConfigError(f"unknown runner.device {device!r}; valid choices: auto, cpu, cuda, cuda:N")

    _check_choice(cfg.dataset.get("name"), sorted(DATASETS), "dataset")
    out["dataset"] = _merge(DATASETS[cfg.dataset.name].schema, cfg.dataset, "dataset")

    for name, params in (cfg.metrics or {}).items():
        _check_choice(name, sorted(METRICS), "metric")
        accepted = list(inspect.signature(METRICS[name]).parameters)
        if unknown := sorted(set(params or {}) - set(accepted)):
            raise ConfigError(
                f"metrics.{name}: unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(accepted)}"
            )
    if not cfg.metrics:
        raise ConfigError("no metrics selected; choose a metrics config, e.g. metrics=default")
    out["metrics"] = cfg.metrics
    return OmegaConf.create({key: out[key] for key in ("model", "method", "dataset", "metrics", "runner")})
