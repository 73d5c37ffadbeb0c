"""One source for every default: each YAML of conf/ holds the declared parameters (a method's or metric's
``Params``, the runner's, model's and datasets' schemas), each set to its declared default, so the command
line and the Python API start from the same values. Presets (conf/metrics that compose others or set another
metric's parameters, the experiments) are checked for unknown keys and wrong types only."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from cambench import params
from cambench.app.config import ModelConfig, RunnerConfig
from cambench.data.registry import DATASETS
from cambench.errors import CambenchError
from cambench.methods import all_methods
from cambench.metrics import METRICS
from cambench.models.build import available_models

CONF = Path(__file__).resolve().parent.parent / "conf"
OMEGACONF_MISSING = "???"


def load(path: Path) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(path))


def plain(value: Any) -> Any:
    """A declared default as YAML writes it (a tuple as a list)."""
    return list(value) if isinstance(value, tuple) else value


def assert_defaults(values: dict[str, Any], declaration: type, where: str, skip: tuple[str, ...] = ()) -> None:
    """``values`` (a YAML's) name every field of the dataclass ``declaration``, each at its default (``???``
    where the declaration has none)."""
    declared = params.fields(declaration)
    assert values.keys() == declared.keys(), f"{where}: keys differ from {declaration.__qualname__}"
    for name, value in values.items():
        default = declared[name][1]
        if name in skip:
            continue
        if default is dataclasses.MISSING:
            assert value == OMEGACONF_MISSING, f"{where}: {name} has no default, the YAML gives {value!r}"
        else:
            assert value == plain(default), f"{where}: {name} is {value!r} in the YAML, {default!r} declared"
            assert type(value) is type(plain(default)) or {type(value), type(default)} <= {int, float}, name


def single_metric(path: Path) -> bool:
    """A metric's own file: one top-level key, the metric's name (and no ``defaults:`` list)."""
    return list(load(path)) == [path.stem]


METHOD_FILES = sorted((CONF / "method").glob("*.yaml"))
METRIC_FILES = sorted(path for path in (CONF / "metrics").glob("*.yaml") if single_metric(path))
PRESET_FILES = sorted(path for path in (CONF / "metrics").glob("*.yaml") if not single_metric(path))


def test_every_method_and_metric_has_its_own_file():
    assert {path.stem for path in METHOD_FILES} == set(all_methods())
    assert {path.stem for path in METRIC_FILES} == set(METRICS)
    assert {path.stem for path in PRESET_FILES} == {"all", "default", "groundtruth", "poppi", "rise"}


@pytest.mark.parametrize("path", METHOD_FILES, ids=lambda path: path.stem)
def test_a_method_file_sets_every_parameter_to_its_declared_default(path):
    values = load(path)
    assert values.pop("name") == path.stem
    assert_defaults(values, all_methods()[path.stem].Params, str(path))


@pytest.mark.parametrize("path", METRIC_FILES, ids=lambda path: path.stem)
def test_a_metric_file_sets_every_parameter_to_its_declared_default(path):
    assert_defaults(load(path)[path.stem] or {}, METRICS[path.stem].Params, str(path))


@pytest.mark.parametrize("path", PRESET_FILES, ids=lambda path: path.stem)
def test_a_preset_names_known_metrics_and_valid_parameters(path):
    values = load(path)
    for entry in values.pop("defaults", []):
        assert entry == "_self_" or (CONF / "metrics" / f"{entry}.yaml").exists(), entry
    for name, given in values.items():
        assert name in METRICS, f"{path}: unknown metric {name!r}"
        params.validate(METRICS[name].Params, given or {}, str(path), CambenchError)


def test_the_paper_protocols_stay_presets():
    """The class's (and the command line's) 16 steps are not RISE's: metrics=rise sets its 224 pixels a
    step, metrics=poppi its 1% steps scored at 0%, ..., 99%."""
    rise, poppi = (load(CONF / "metrics" / f"{name}.yaml")["deletion_insertion"] for name in ("rise", "poppi"))
    assert (rise["steps"], rise["pixels_per_step"]) == (224, 224)
    assert (poppi["steps"], poppi["pixels_per_step"], poppi["final_point"]) == (100, None, False)
    assert METRICS["deletion_insertion"].Params().steps == 16


def test_the_runner_file_is_the_runner_schema_at_its_defaults():
    assert_defaults(load(CONF / "runner" / "default.yaml"), RunnerConfig, "conf/runner/default.yaml")
    assert RunnerConfig().num_images == 64  # the command line's default subset, from Python too


@pytest.mark.parametrize("path", sorted((CONF / "model").glob("*.yaml")), ids=lambda path: path.stem)
def test_a_model_file_is_the_model_schema_at_its_defaults(path):
    values = load(path)
    assert values["name"] == path.stem and path.stem in available_models()
    assert_defaults(values, ModelConfig, str(path), skip=("name",))


@pytest.mark.parametrize("path", sorted((CONF / "dataset").glob("*.yaml")), ids=lambda path: path.stem)
def test_a_dataset_file_is_its_schema_at_its_defaults(path):
    values = load(path)
    assert values["name"] == path.stem and path.stem in DATASETS
    assert_defaults(values, DATASETS[path.stem].schema, str(path))
    OmegaConf.merge(OmegaConf.structured(DATASETS[path.stem].schema), values)  # the types


def test_every_dataset_has_its_file():
    assert {path.stem for path in (CONF / "dataset").glob("*.yaml")} == set(DATASETS)


@pytest.mark.parametrize("path", sorted((CONF / "experiment").glob("*.yaml")), ids=lambda path: path.stem)
def test_an_experiment_sets_known_keys_of_valid_types(path):
    values = load(path)
    chosen = {key: value for entry in values["defaults"] for key, value in entry.items()}
    dataset = chosen.get("override /dataset", "shapes")
    schemas = {"runner": RunnerConfig, "model": ModelConfig, "dataset": DATASETS[dataset].schema}
    for group, schema in schemas.items():
        OmegaConf.merge(OmegaConf.structured(schema), values.get(group, {}))  # raises on an unknown key or type
    for name, given in values.get("metrics", {}).items():
        params.validate(METRICS[name].Params, given, str(path), CambenchError)
