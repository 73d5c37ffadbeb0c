"""The Python API (cambench.method, cambench.score, cambench.benchmark): on modules defined here, on a timm
model, with maps of pytorch-grad-cam, and against the same scores computed through the runner's pieces."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cambench
from cambench.methods import GradCAM, GradCAMPlusPlus, MethodError, SmoothGradCAMPlusPlus
from cambench.methods.base import finalise, weighted_sum
from cambench.metrics import MetricError


class TinyNet(nn.Module):
    """A classifier defined here (not torchvision): two conv blocks, global average pooling, a linear head."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2, padding=1)
        )
        self.act = nn.ReLU()
        self.head = nn.Linear(12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.features(x)).mean((2, 3)))


class Untraceable(TinyNet):
    """Data-dependent Python control flow: torch.fx cannot trace it, the hook fallback splits it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.features(x))
        if a.sum() > -1:  # always true, but fx cannot know
            a = a * 1.0
        return self.head(a.mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return TinyNet().eval(), torch.randn(3, 3, 16, 16)


def grad_cam_by_hand(model: TinyNet, images: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of the predicted class at ``features`` (the second conv), written out."""
    a = model.features(images).detach().requires_grad_(True)
    logits = model.head(model.act(a).mean((2, 3)))
    target = logits.argmax(1)
    (g,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), a)
    return finalise(weighted_sum(g.mean((2, 3)), a.detach()), images.shape[-2:])


def test_a_method_on_a_module_defined_here_is_grad_cam_by_hand(tiny):
    model, images = tiny
    out = cambench.method("gradcam", model, target_layer="features")(images)
    torch.testing.assert_close(out.maps, grad_cam_by_hand(model, images), rtol=0, atol=1e-6)
    assert out.maps.shape == (3, 16, 16) and out.maps.amin() == 0 and out.maps.amax() == 1
    torch.testing.assert_close(out.logits, model(images))
    assert out.targets.tolist() == model(images).argmax(1).tolist()
    assert out.raw.shape == (3, 8, 8) and out.passes.forward == 1 and out.passes.backward == 1


def test_the_hook_fallback_gives_the_same_maps_on_an_untraceable_module(tiny, caplog):
    model, images = tiny
    other = Untraceable().eval()
    other.load_state_dict(model.state_dict())
    cam = cambench.method("gradcam", other, target_layer=other.features)  # a module, as pytorch-grad-cam takes
    assert cam.engine.split.mode == "hooks" and "falling back to forward hooks" in caplog.text
    torch.testing.assert_close(cam(images).maps, grad_cam_by_hand(model, images), rtol=0, atol=1e-6)


def test_classes_and_names_build_the_same_method_and_check_parameters_in_the_constructor(tiny):
    model, images = tiny
    by_class = GradCAMPlusPlus(model, "features")(images)
    by_name = cambench.method("gradcampp", model, target_layer="features")(images)
    assert torch.equal(by_class.maps, by_name.maps)
    assert isinstance(GradCAM(model, "features"), GradCAM)
    with pytest.raises(MethodError, match=r"^method gradcampp: unknown parameter 'foo' \(valid parameters: none\)$"):
        GradCAMPlusPlus(model, "features", foo=1)
    with pytest.raises(MethodError, match="smoothgradcampp needs samples >= 1"):
        SmoothGradCAMPlusPlus(model, "features", samples=0)
    with pytest.raises(MethodError, match="method smoothgradcampp: samples: Value 'many' of type 'str' could not be"):
        SmoothGradCAMPlusPlus(model, "features", samples="many")
    with pytest.raises(MethodError, match="unknown method 'nosuch'; valid choices: ablationcam, "):
        cambench.method("nosuch", model, target_layer="features")
    # help() shows the hyper-parameters with their defaults, declared once (the Params dataclass)
    signature = inspect.signature(SmoothGradCAMPlusPlus)
    assert signature.parameters["samples"].default == 4 and signature.parameters["sigma"].default == 0.3
    assert list(signature.parameters)[:2] == ["model", "target_layer"]


def test_targets_are_one_class_per_image_or_one_for_all(tiny):
    model, images = tiny
    cam = cambench.method("gradcam", model, target_layer="features")
    assert cam(images, targets=2).targets.tolist() == [2, 2, 2]
    assert cam(images, targets=[0, 1, 2]).targets.tolist() == [0, 1, 2]
    with pytest.raises(MethodError, match=r"targets must be one class per image \(3\) or one int"):
        cam(images, targets=[0, 1])


def test_a_timm_model_with_random_weights():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=4).eval()
    images = torch.randn(2, 3, 32, 32)
    cam = cambench.method("layercam", model, target_layer="layer4")
    out = cam(images)
    assert cam.engine.split.mode == "fx" and out.maps.shape == (2, 32, 32)
    a = model.layer4(
        model.layer3(model.layer2(model.layer1(model.maxpool(model.act1(model.bn1(model.conv1(images)))))))
    )
    a = a.detach().requires_grad_(True)
    logits = model.fc(model.global_pool(a))
    (g,) = torch.autograd.grad(logits.gather(1, out.targets[:, None]).sum(), a)
    expected = finalise((torch.relu(g) * a.detach()).sum(1), (32, 32))  # LayerCAM at one layer
    torch.testing.assert_close(out.maps, expected, rtol=0, atol=1e-5)


def test_score_takes_maps_as_numpy_at_any_resolution(tiny):
    model, images = tiny
    out = cambench.method("gradcam", model, target_layer="features")(images)
    metrics = {"deletion_insertion": {"steps": 4, "blur_kernel": 1}}
    at_input = cambench.score(model, images, out.maps, metrics=metrics)
    from_raw = cambench.score(model, images, out.raw.numpy(), metrics=metrics)  # 8 x 8, as another tool gives
    pd.testing.assert_frame_equal(at_input, from_raw)
    assert list(at_input.columns) == ["target", "deletion", "insertion"]
    assert at_input.index.tolist() == ["0", "1", "2"] and at_input["target"].tolist() == out.targets.tolist()


def test_score_of_map_only_metrics_needs_no_model():
    maps = torch.zeros(2, 4, 4)
    maps[0, 0, 0] = 1.0  # one hot pixel: all the mass in the mask
    maps[1] = 1.0  # constant
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True
    scores = cambench.score(None, torch.zeros(2, 3, 4, 4), maps, metrics=["localisation"], masks=masks, ids=["a", "b"])
    assert scores.loc["a", "pointing_game"] == 1.0 and scores.loc["a", "energy_pointing_game"] == 1.0
    assert "target" not in scores.columns  # no model, no targets: no class to show
    with pytest.raises(MetricError, match=r"metric deletion_insertion needs the model .*: give model="):
        cambench.score(None, torch.zeros(2, 3, 4, 4), maps, metrics=["deletion_insertion"])
    with pytest.raises(MetricError, match=r"metric localisation needs ground-truth masks .*: give masks="):
        cambench.score(None, torch.zeros(2, 3, 4, 4), maps, metrics=["localisation"])


def test_score_rejects_maps_with_nan_naming_the_images(tiny):
    model, images = tiny
    maps = torch.rand(3, 16, 16)
    maps[1, 2, 3] = float("nan")
    maps[2, 0, 0] = float("inf")
    with pytest.raises(MetricError, match=r"^2 maps hold NaN or inf \(images b, c\): replace them"):
        cambench.score(model, images, maps, metrics=["deletion_insertion"], ids=["a", "b", "c"])


def test_metrics_that_need_new_maps_take_a_method_or_a_callable(tiny):
    model, images = tiny
    cam = cambench.method("gradcam", model, target_layer="features")
    maps = cam(images).maps
    with pytest.raises(
        MetricError, match=r"metric adcc needs a method that makes maps of new inputs .*: give explainer="
    ):
        cambench.score(model, images, maps, metrics=["adcc"])
    ours = cambench.score(model, images, maps, metrics=["adcc"], explainer=cam)
    as_callable = cambench.score(model, images, maps, metrics=["adcc"], explainer=lambda x, t: cam(x, t).maps)
    pd.testing.assert_frame_equal(ours, as_callable, atol=1e-6, rtol=0)
    assert (ours["coherency"] > 0).all()


def test_a_pytorch_grad_cam_object_wrapped_in_one_line_scores_as_cambench_grad_cam():
    """The README's one-line wrapper: pytorch-grad-cam's Grad-CAM maps and the same object as the explainer
    of ADCC give the scores of cambench's own Grad-CAM (the maps agree to float rounding)."""
    from pytorch_grad_cam import GradCAM as TheirGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = cambench.load_model("resnet18")
    data = cambench.load_dataset("shapes")
    images = torch.stack([data[i].image for i in range(4)])
    ours = cambench.method("gradcam", model, target_layer="layer4")
    theirs = TheirGradCAM(model=model, target_layers=[model.layer4])
    explainer = lambda x, t: theirs(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in t.tolist()])  # noqa: E731
    metrics = {"deletion_insertion": {"steps": 16}, "adcc": {}}
    mine = ours(images)
    their_maps = explainer(images, mine.targets)
    assert isinstance(their_maps, np.ndarray) and np.abs(their_maps - mine.maps.numpy()).max() < 1e-6
    theirs_scored = cambench.score(model, images, their_maps, metrics=metrics, explainer=explainer)
    ours_scored = cambench.score(model, images, mine.maps, metrics=metrics, explainer=ours)
    pd.testing.assert_frame_equal(theirs_scored, ours_scored, atol=1e-6, rtol=0)


def test_benchmark_runs_methods_and_baselines_over_a_dataset_and_an_iterable(tiny):
    model, _ = tiny
    torch.manual_seed(1)
    images, labels = torch.randn(5, 3, 16, 16), torch.randint(0, 5, (5,))
    metrics = {"deletion_insertion": {"steps": 4, "blur_kernel": 1}, "confidence": {}}
    options = {"target_layer": "features", "metrics": metrics, "progress": False, "bootstrap": 20}
    dataset = torch.utils.data.TensorDataset(images, labels)
    rows, summary = cambench.benchmark(model, dataset, ["gradcam", "eigencam"], batch_size=2, **options)
    assert rows.groupby("method").size().to_dict() == {"eigencam": 5, "fakecam": 5, "gradcam": 5}
    assert rows[rows.method == "gradcam"]["id"].tolist() == ["0", "1", "2", "3", "4"]
    batches = [(images[i : i + 2], labels[i : i + 2]) for i in range(0, 5, 2)]
    again = cambench.benchmark(model, batches, ["gradcam", "eigencam"], **options)
    pd.testing.assert_frame_equal(scores_only(again.rows), scores_only(rows))
    # the scores are what cambench.score gives for the method's maps
    maps = cambench.method("gradcam", model, target_layer="features")(images).maps
    direct = cambench.score(model, images, maps, metrics=metrics)
    gradcam = rows[rows.method == "gradcam"].set_index(direct.index)
    for column in ("average_drop", "average_gain"):
        pd.testing.assert_series_equal(gradcam[column], direct[column], check_names=False, atol=1e-6, rtol=0)
    # the summary: per method and metric the mean, the baseline's mean beside it, and the flags
    means = summary.set_index(["method", "metric"])
    assert means.loc[("gradcam", "average_drop"), "mean"] == pytest.approx(direct["average_drop"].mean(), abs=1e-6)
    fakecam = rows[rows.method == "fakecam"]["insertion"].mean()
    assert means.loc[("eigencam", "insertion"), "fakecam"] == pytest.approx(fakecam)
    assert set(summary["method"]) == {"gradcam", "eigencam"}


def scores_only(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[[c for c in rows.columns if not c.startswith(("seconds_", "peak_memory"))]].reset_index(drop=True)


def test_benchmark_with_out_dir_goes_on_after_a_stop(tiny, tmp_path, monkeypatch):
    model, _ = tiny
    torch.manual_seed(2)
    dataset = torch.utils.data.TensorDataset(torch.randn(6, 3, 16, 16), torch.randint(0, 5, (6,)))
    options = {"target_layer": "features", "progress": False, "bootstrap": 20, "batch_size": 2}
    options["metrics"] = {"deletion_insertion": {"steps": 4, "blur_kernel": 1}}
    whole = cambench.benchmark(model, dataset, ["gradcam"], **options)

    from cambench.io.writer import RunWriter

    append, calls = RunWriter.append, []

    def stop_at_the_third_batch(self, rows):
        calls.append(1)
        if len(calls) == 5:  # two files a batch: the method's third batch
            raise KeyboardInterrupt
        append(self, rows)

    with monkeypatch.context() as patch:
        patch.setattr(RunWriter, "append", stop_at_the_third_batch)
        with pytest.raises(KeyboardInterrupt):
            cambench.benchmark(model, dataset, ["gradcam"], out_dir=tmp_path, **options)
    assert len(pd.read_csv(tmp_path / "per_image_gradcam.csv")) == 4
    resumed = cambench.benchmark(model, dataset, ["gradcam"], out_dir=tmp_path, **options)
    pd.testing.assert_frame_equal(scores_only(resumed.rows), scores_only(whole.rows), check_dtype=False)
    with pytest.raises(cambench.CambenchError, match="holds another benchmark"):
        cambench.benchmark(model, dataset, ["eigencam"], out_dir=tmp_path, **options)


def test_benchmark_needs_masks_for_the_localisation_metrics(tiny):
    model, _ = tiny
    data = [(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))]
    with pytest.raises(MetricError, match=r"localisation need ground-truth masks: give \(images, labels, masks\)"):
        cambench.benchmark(model, data, ["gradcam"], ["localisation"], "features", progress=False)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, :8] = True
    rows, _ = cambench.benchmark(
        model, [(*data[0], masks)], ["gradcam"], ["localisation"], "features", baselines=[], progress=False
    )
    assert rows["pointing_game"].notna().all()


def test_cam_of_a_gap_linear_module_is_the_head_weights_times_the_activations(tiny):
    model, images = tiny
    out = cambench.method("cam", model, target_layer="act")(images)
    a = F.relu(model.features(images))
    expected = finalise(weighted_sum(model.head.weight[out.targets], a), images.shape[-2:])
    torch.testing.assert_close(out.maps, expected, rtol=0, atol=1e-6)
