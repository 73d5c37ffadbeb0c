"""Every registered method through the runner (in process, small images): the shipped resnet18
(64 px) and random-weight vgg11_bn and mobilenet_v3_small (48 px), batch sizes 4 (4 images) and 1
(the first 2). Maps must be finite, of input size and in [0, 1]; batching must not change them;
the rows carry the declared passes."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from cambench.app import run as runner
from cambench.app.config import validate
from cambench.methods import METHODS, CAMMethod
from cambench.models.build import build_model

CONF = str(Path(__file__).resolve().parent.parent / "conf")
MODELS = {"resnet18": "reference", "vgg11_bn": "random", "mobilenet_v3_small": "random"}
SIZES = {"resnet18": 64, "vgg11_bn": 48, "mobilenet_v3_small": 48}
RUNS = ((4, 4), (1, 2))  # (batch size, images)
# Their random draws are seeded per batch (so a resumed run draws what an uninterrupted one does):
# another batch size gives an image other draws.
DRAWN_PER_BATCH = {"smoothgradcampp", "sscam", "noisecam", "randomcam"}
HEAD_ONLY = {"cam": {"resnet18"}}  # CAM needs a linear head: VGG and MobileNetV3 fail at start
# Hyper-parameters that keep the costliest methods quick here (method: overrides); their defaults
# run in the CLI acceptance sweep and the benchmark.
QUICK: dict[str, list[str]] = {
    "smoothgradcampp": ["method.samples=2"],
    "sscam": ["method.samples=1"],
    "iscam": ["method.samples=1"],
    "integratedgradcam": ["method.steps=4"],
    "opticam": ["method.iterations=3"],
    "polycam": ["method.max_channels=4"],
}


@pytest.fixture(autouse=True)
def built_once(monkeypatch):
    """The same build_model, each model built once for the whole file (VGG's random init takes seconds)."""
    monkeypatch.setattr(runner, "build_model", _cached_build)


_BUILT = {}


def _cached_build(arch, weights, num_classes, dataset, layers):
    key = (arch, weights, num_classes, dataset, tuple(layers))
    if key not in _BUILT:
        _BUILT[key] = build_model(arch, weights, num_classes, dataset, layers)
    return _BUILT[key]


def config(model, method, batch_size, tmp_path, images=4):
    overrides = [
        f"model={model}",
        f"model.weights={MODELS[model]}",
        f"method={method}",
        f"dataset.image_size={SIZES[model]}",
        f"runner.num_images={images}",
        f"runner.batch_size={batch_size}",
        "metrics=deletion_insertion",  # one map per image: the explain calls collected below are the method's
        "metrics.deletion_insertion.steps=1",
        "runner.baselines=[]",
        "runner.progress=false",
        "runner.bootstrap=10",
        f"runner.results_table={tmp_path / 'runs.csv'}",
        *QUICK.get(method, []),
    ]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return validate(compose("config", overrides=overrides))


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_at_batch_sizes_1_and_4(model, method, tmp_path, monkeypatch):
    if model not in HEAD_ONLY.get(method, {model}):
        with pytest.raises(Exception, match="needs global average pooling and one linear layer"):
            runner.run(config(model, method, 4, tmp_path), tmp_path / "run")
        return
    maps: dict[int, list[torch.Tensor]] = {1: [], 4: []}
    collected: list[torch.Tensor] = []
    explain = CAMMethod.explain

    def keep(self, images, targets=None, ids=None):
        out = explain(self, images, targets, ids)
        collected.append(out.maps)
        return out

    monkeypatch.setattr(CAMMethod, "explain", keep)
    for batch_size, images in RUNS:
        collected = maps[batch_size]
        result = runner.run(config(model, method, batch_size, tmp_path, images), tmp_path / f"run{batch_size}")
        assert len(result.rows) == images
        assert result.rows[["deletion", "insertion"]].notna().all().all()
    four, one = torch.cat(maps[4]), torch.cat(maps[1])
    size = SIZES[model]
    assert four.shape == (4, size, size) and one.shape == (2, size, size)
    assert torch.isfinite(four).all() and four.min() >= 0 and four.max() <= 1
    if method not in DRAWN_PER_BATCH:
        torch.testing.assert_close(one, four[:2], rtol=0, atol=2e-3)
    passes = result.rows[["passes_forward", "passes_backward", "passes_input_backward"]].iloc[0].tolist()
    assert passes[0] >= 1 and (passes[1] > 0) == METHODS[method].needs_gradients
    assert (passes[2] > 0) == METHODS[method].needs_input_gradients


def test_method_parameters_reach_the_method(tmp_path):
    cfg = config("resnet18", "smoothgradcampp", 4, tmp_path)
    cfg.method.samples = 3
    result = runner.run(cfg, tmp_path / "run")
    assert result.rows["passes_forward"].tolist() == [4.0] * 4 and result.rows["passes_backward"].tolist() == [3.0] * 4
