"""Start-up checks of a run that need the registries: metric requirements against what the dataset
and the method can give, before any weights are loaded."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from cambench.app.config import ConfigError, validate
from cambench.app.run import preflight
from cambench.metrics import METRICS, Metric

CONF = str(Path(__file__).resolve().parent.parent / "conf")


class NeedsMasks(Metric):
    names = ("inside",)
    requires = frozenset({"masks"})


def config(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return validate(compose("config", overrides=list(overrides)))


@pytest.fixture
def needs_masks(monkeypatch):
    monkeypatch.setitem(METRICS, "needs_masks", NeedsMasks)
    return "+metrics.needs_masks={}"


def test_a_metric_needing_masks_fails_at_start_on_a_dataset_without_them(tmp_path, needs_masks):
    (tmp_path / "cat").mkdir()
    cfg = config(needs_masks, "dataset=folder", f"dataset.root={tmp_path}", "model.weights=random")
    with pytest.raises(ConfigError, match=r"metric needs_masks needs ground-truth masks .* dataset=folder"):
        preflight(cfg)


def test_masks_are_there_on_shapes_and_on_imagenet_with_boxes(tmp_path, needs_masks):
    assert preflight(config(needs_masks)) == ["layer4"]
    imagenet = ["dataset=imagenet", f"dataset.root={tmp_path}", "model.weights=random"]
    assert preflight(config(needs_masks, *imagenet, f"dataset.boxes_dir={tmp_path}")) == ["layer4"]
    with pytest.raises(ConfigError, match="needs ground-truth masks"):
        preflight(config(needs_masks, *imagenet))
