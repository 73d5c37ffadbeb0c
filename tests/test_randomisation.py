"""Model randomisation (Adebayo et al. 2018): the block order of the torchvision families, exactly 1
for model-independent methods, Grad-CAM values equal to a hand-built cascade, seeding, the original
model and the global RNG left untouched, the option checks, and agreement with Quantus's MPRT."""

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from conftest import make_method
from hydra import compose, initialize_config_dir
from torch import nn

from cambench.app.config import ConfigError, validate
from cambench.methods import CAMOutput
from cambench.metrics import METRICS, MetricContext, MetricError, MetricInput, build_metric
from cambench.metrics.class_sensitivity import ssim
from cambench.metrics.correlation import spearman
from cambench.metrics.randomisation import randomisation_blocks, rank_similarity, unresettable
from cambench.models.engine import Passes

CLASSES = 5
CONF = str(Path(__file__).resolve().parent.parent / "conf")


class Stub(nn.Module):
    """conv1 -> bn1 -> ReLU -> conv2 (target layer) -> ReLU -> GAP -> fc; blocks: fc, conv2, conv1+bn1."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(8, CLASSES)
        with torch.no_grad():  # trained-looking batch norm, so that its reset changes something
            self.bn1.running_mean.uniform_(-0.5, 0.5)
            self.bn1.running_var.uniform_(0.5, 2.0)
            self.bn1.weight.uniform_(0.5, 1.5)
            self.bn1.bias.uniform_(-0.2, 0.2)
        self.eval()

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.fc(self.flat(self.pool(x)))


def images(batch: int = 4, size: tuple[int, int] = (24, 20), seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def scores(method, x: torch.Tensor, metric=None, **params) -> dict[str, torch.Tensor]:
    out = method.explain(x)
    metric = metric or build_metric("model_randomisation", MetricContext(method.engine, method), **params)
    return metric.update(MetricInput.of(out, x, [str(i) for i in range(len(x))], labels=out.targets))


def cascade(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """Grad-CAM maps after each step, by hand: on a copy, block k's modules reset under torch.manual_seed(seed + k)."""
    work = copy.deepcopy(model)
    maps = []
    for k, block in enumerate([[work.fc], [work.conv2], [work.conv1, work.bn1]], 1):
        with torch.random.fork_rng():
            torch.manual_seed(seed + k)
            for module in block:
                module.reset_parameters()
        maps.append(make_method("gradcam", work, "conv2").explain(x, targets).maps)
    return maps


def test_block_order_of_the_torchvision_families():
    with torch.device("meta"):  # structure only: no weights drawn
        resnet = torchvision.models.resnet18(weights=None)
        vgg = torchvision.models.vgg11_bn(weights=None)
        mobilenet = torchvision.models.mobilenet_v3_small(weights=None)
    assert randomisation_blocks(resnet) == [
        ("fc",),
        ("layer4",),
        ("layer3",),
        ("layer2",),
        ("layer1",),
        ("conv1", "bn1"),
    ]
    convs = [25, 22, 18, 15, 11, 8, 4, 0]  # each conv with the batch norm after it
    assert randomisation_blocks(vgg) == [("classifier",)] + [(f"features.{i}", f"features.{i + 1}") for i in convs]
    assert randomisation_blocks(mobilenet) == [("classifier",)] + [(f"features.{i}",) for i in range(12, -1, -1)]
    for model in (resnet, vgg, mobilenet):
        assert unresettable(model, randomisation_blocks(model)) == []
    assert randomisation_blocks(Stub()) == [("fc",), ("conv2",), ("conv1", "bn1")]


def test_columns_follow_the_layers_option():
    cls = METRICS["model_randomisation"]
    assert cls.columns(cls.Params()) == ("randomisation_spearman", "randomisation_ssim")
    assert cls.columns(cls.Params(layers=2)) == (
        "randomisation_spearman",
        "randomisation_ssim",
        "randomisation_spearman_1",
        "randomisation_spearman_2",
        "randomisation_ssim_1",
        "randomisation_ssim_2",
    )
    assert set(cls.columns(cls.Params(layers=17))) <= cls.lower_is_better


def test_a_flat_randomised_map_has_rank_correlation_zero():
    ramp = torch.arange(16 * 12, dtype=torch.float32).view(1, 16, 12) / 191
    maps = torch.cat([ramp, ramp, torch.zeros_like(ramp)])
    again = torch.cat([1 - ramp, torch.zeros_like(ramp), torch.zeros_like(ramp)])
    values = rank_similarity(maps, again)
    assert values[0] == -1 and values[1] == 0 and values[2].isnan()
    assert spearman(maps, again)[1:].isnan().all()  # the shared function: undefined


@pytest.mark.parametrize("name", ["edgecam", "fakecam"])
def test_a_model_independent_method_gives_exactly_one(name):
    method = make_method(name, Stub(), "conv2")
    values = scores(method, images(), layers=3)
    assert set(values) == set(METRICS["model_randomisation"].columns(METRICS["model_randomisation"].Params(layers=3)))
    for column, value in values.items():
        assert torch.equal(value, torch.ones(4)), column


def test_gradcam_values_equal_a_hand_built_cascade():
    model, x, seed = Stub(), images(), 3
    method = make_method("gradcam", model, "conv2", seed=seed)
    out = method.explain(x)
    values = scores(method, x, layers=3)
    expected = cascade(model, x, out.targets, seed)
    rho = torch.stack([spearman(out.maps, again) for again in expected], 1)  # no flat map here
    s = torch.stack([ssim(out.maps, again) for again in expected], 1)
    for k in range(3):
        torch.testing.assert_close(values[f"randomisation_spearman_{k + 1}"], rho[:, k])
        torch.testing.assert_close(values[f"randomisation_ssim_{k + 1}"], s[:, k])
    torch.testing.assert_close(values["randomisation_spearman"], rho.nanmean(1))
    torch.testing.assert_close(values["randomisation_ssim"], s.nanmean(1))
    assert (rho < 0.99).all() and (s < 0.99).all()  # randomising changes the maps
    # layers=None: every block, the means only, the same values
    everything = scores(method, x)
    assert set(everything) == {"randomisation_spearman", "randomisation_ssim"}
    torch.testing.assert_close(everything["randomisation_spearman"], values["randomisation_spearman"])


def test_seeded_and_the_same_models_for_every_batch():
    model = Stub()
    first, second = images(seed=1), images(seed=2)
    method = make_method("gradcam", model, "conv2", seed=0)
    metric = build_metric("model_randomisation", MetricContext(method.engine, method), layers=3)
    scores(method, first, metric)
    again = scores(method, second, metric)  # the copy is restored and randomised the same way per batch
    alone = scores(method, second, layers=3)
    for column, value in alone.items():
        assert torch.equal(again[column], value), column
    other = scores(make_method("gradcam", model, "conv2", seed=1), second, layers=3)
    assert not torch.equal(other["randomisation_ssim"], alone["randomisation_ssim"])
    both = torch.cat([scores(method, first, layers=3)["randomisation_ssim_2"], alone["randomisation_ssim_2"]])
    torch.testing.assert_close(metric.compute()["randomisation_ssim_2"], both.mean())


def test_the_original_model_and_the_global_rng_are_untouched():
    model = Stub()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = make_method("gradcam", model, "conv2")
    out = method.explain(images())
    rng = torch.random.get_rng_state()
    metric = build_metric("model_randomisation", MetricContext(method.engine, method))
    scores(method, images(), metric)
    assert torch.equal(torch.random.get_rng_state(), rng)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(method.explain(images()).maps, out.maps)
    bn = metric._model.bn1  # the working copy ends fully randomised: batch norm reset to its defaults
    assert torch.equal(bn.running_mean, torch.zeros(8)) and torch.equal(bn.running_var, torch.ones(8))
    assert torch.equal(bn.weight, torch.ones(8)) and torch.equal(bn.bias, torch.zeros(8))


def test_resnet18_runs_every_block():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=CLASSES).eval()
    before = copy.deepcopy(model.state_dict())
    method = make_method("gradcam", model, "layer4")
    metric = build_metric("model_randomisation", MetricContext(method.engine, method))
    assert len(metric.blocks) == 6
    values = scores(method, images(2, (32, 32)), metric)
    assert ((values["randomisation_ssim"] > -1) & (values["randomisation_ssim"] <= 1)).all()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class Scaled(nn.Module):
    """A layer with a parameter and no reset_parameters()."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.scale


class WithScale(nn.Module):
    """Scaled input, then the stub: blocks stub, scale."""

    def __init__(self):
        super().__init__()
        self.scale = Scaled()
        self.stub = Stub()

    def forward(self, x):
        return self.stub(self.scale(x))


class Unnamed:
    """A method object that is not a registered method."""

    def explain(self, images, targets=None):
        maps = torch.rand(len(images), *images.shape[-2:])
        return CAMOutput(maps, maps, torch.zeros(len(images), CLASSES), targets, Passes(forward=1))


def test_bad_options_fail_with_metric_error():
    method = make_method("gradcam", Stub(), "conv2")
    ctx = MetricContext(method.engine, method)
    for layers in (0, 65):
        with pytest.raises(MetricError, match="layers"):
            build_metric("model_randomisation", ctx, layers=layers)
    with pytest.raises(MetricError, match="has 3 blocks"):
        build_metric("model_randomisation", ctx, layers=4)
    scaled = make_method("gradcam", WithScale(), "stub.conv2")
    with pytest.raises(MetricError, match=r"scale\.scale"):
        build_metric("model_randomisation", MetricContext(scaled.engine, scaled))
    assert len(build_metric("model_randomisation", MetricContext(scaled.engine, scaled), layers=1).blocks) == 1
    with pytest.raises(MetricError, match="registered name"):
        build_metric("model_randomisation", MetricContext(method.engine, Unnamed()))
    with pytest.raises(MetricError, match="11 x 11"):
        scores(method, images(2, (8, 8)))


def test_config_file_validates():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = validate(compose("config", overrides=["metrics=model_randomisation"]))
        assert cfg.metrics.model_randomisation.layers is None
        with pytest.raises(ConfigError, match="layers"):
            validate(
                compose("config", overrides=["metrics=model_randomisation", "metrics.model_randomisation.layers=0"])
            )


def test_agrees_with_quantus_mprt(monkeypatch):
    np.trapz = np.trapezoid  # Quantus 0.6 calls np.trapz (removed in numpy 2.4)
    import quantus

    model, x, seed = Stub(), images(), 5
    method = make_method("gradcam", model, "conv2", seed=seed)
    out = method.explain(x)
    ours = scores(method, x, layers=3)

    def explain(model, inputs, targets, **_):
        maps = make_method("gradcam", model, "conv2").explain(torch.as_tensor(inputs), torch.as_tensor(targets)).maps
        return maps[:, None].numpy()

    # Quantus re-initialises every module with reset_parameters (fc, conv2, bn1, conv1), each under
    # torch.manual_seed(seed + 1); map its calls to our per-block seeds (bn1 and conv1 share block 3)
    seeds = iter([seed + 1, seed + 2, seed + 3, seed + 3])
    real = torch.manual_seed
    monkeypatch.setattr(torch, "manual_seed", lambda seed: real(next(seeds)))
    theirs = quantus.MPRT(layer_order="top_down", seed=seed, disable_warnings=True, display_progressbar=False)(
        model=model,
        x_batch=x.numpy(),
        y_batch=out.targets.numpy(),
        a_batch=out.maps[:, None].numpy(),
        explain_func=explain,
        device="cpu",
        batch_size=len(x),
    )
    monkeypatch.undo()
    assert list(theirs) == ["original", "fc", "conv2", "bn1", "conv1"]
    for k, layer in enumerate(["fc", "conv2", "conv1"], 1):
        expected = torch.tensor(theirs[layer], dtype=torch.float32)
        torch.testing.assert_close(ours[f"randomisation_spearman_{k}"], expected, atol=1e-6, rtol=0)


def test_in_a_run_beside_the_fakecam_baseline(tmp_path):
    from cambench.app.run import run

    overrides = ["metrics=model_randomisation", "metrics.model_randomisation.layers=2", "model.weights=random"]
    overrides += ["dataset.image_size=64", "runner.num_images=4", "runner.batch_size=2", "runner.progress=false"]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = validate(compose("config", overrides=[*overrides, f"runner.results_table={tmp_path / 'runs.csv'}"]))
    result = run(cfg, tmp_path / "run")
    columns = list(METRICS["model_randomisation"].columns(METRICS["model_randomisation"].Params(layers=2)))
    assert set(columns) <= set(result.rows.columns) and set(columns) <= set(result.summary["metric"])
    assert result.rows[columns].apply(lambda c: c.isna() | c.between(-1, 1)).all().all()  # NaN: a flat original map
    assert result.rows.filter(like="randomisation_ssim").notna().all().all()
    fakecam = pd.read_csv(tmp_path / "run" / "per_image_fakecam.csv")
    assert (fakecam[columns] == 1).all().all()
