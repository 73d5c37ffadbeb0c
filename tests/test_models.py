"""Model building: target layers, weights resolution, safe checkpoints, reference cache."""

import dataclasses
import urllib.error

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from cambench.data.preprocessing import Preprocessing
from cambench.models import build, checkpoints
from cambench.models.build import ModelError, build_model, check_target_layers
from cambench.models.checkpoints import CheckpointError
from cambench.models.layers import TargetLayerError
from cambench.models.training import Recipe, accuracy, recipe_for


@pytest.mark.parametrize(
    ("arch", "layer"),
    [
        ("resnet18", "layer4"),
        ("resnet152", "layer4"),
        ("vgg16", "features.29"),
        ("vgg16_bn", "features.42"),
        ("vgg11", "features.19"),
        ("mobilenet_v3_small", "features.12"),
        ("mobilenet_v3_large", "features.16"),
    ],
)
def test_default_target_layer_per_family(arch, layer):
    assert check_target_layers(arch, 10, None) == [layer]


def test_unknown_target_layer_lists_candidates_and_close_matches():
    with pytest.raises(TargetLayerError) as err:
        check_target_layers("resnet18", 10, ["layer4.1.conv3"])
    message = str(err.value)
    assert "layer4.1.conv3" in message and "layer4.1.conv1" in message and "layer4, layer4.0" in message
    with pytest.raises(TargetLayerError, match="no default target layer for 'alexnet'"):
        check_target_layers("alexnet", 10, None)
    assert check_target_layers("alexnet", 10, ["features.11"]) == ["features.11"]


@pytest.mark.parametrize(
    ("arch", "layer", "message"),
    [
        ("resnet18", "fc", r"outputs shape \(1, 10\) \(2-D\)"),
        ("resnet18", "avgpool", r"no spatial extent"),
        ("swin_t", "features", r"channels last \(N, H, W, C\)"),
        ("vit_b_16", "encoder.layers.encoder_layer_11", r"outputs shape \(1, 197, 768\) \(3-D\)"),
    ],
)
def test_target_layers_without_a_feature_map_fail_before_any_weights(arch, layer, message):
    with pytest.raises(TargetLayerError, match=message):
        check_target_layers(arch, 10, [layer])


def test_a_bad_target_layer_suggests_layers_that_output_feature_maps():
    with pytest.raises(TargetLayerError) as err:
        check_target_layers("resnet18", 10, ["fc"])  # avgpool (1 x 1) and fc (2-D) are not suggested
    assert str(err.value).endswith("e.g. one of: layer3, layer3.0, layer3.1, layer4, layer4.0, layer4.1")
    with pytest.raises(TargetLayerError, match=r"AuxLogits\.conv0 is not called in the model's forward pass"):
        check_target_layers("inception_v3", 10, ["AuxLogits.conv0"])  # the auxiliary head runs in training only


def test_architectures_that_cannot_be_built_on_meta_are_checked_on_the_cpu():
    assert check_target_layers("regnet_y_400mf", 10, ["trunk_output"]) == ["trunk_output"]


def _state(arch="resnet18", classes=3):
    torch.manual_seed(1)
    return torchvision.models.get_model(arch, num_classes=classes).state_dict()


@pytest.mark.parametrize("kind", ["safetensors", "pt", "wrapped"])
def test_local_checkpoints_load_safely(tmp_path, kind):
    state = _state()
    path = tmp_path / f"ckpt.{'safetensors' if kind == 'safetensors' else 'pt'}"
    if kind == "safetensors":
        save_file(state, path)
    else:
        torch.save({"state_dict": state, "epoch": 3} if kind == "wrapped" else state, path)
    loaded = build_model("resnet18", str(path), 3, "folder")
    assert torch.equal(loaded.model.fc.weight, state["fc.weight"]) and loaded.target_layers == ["layer4"]


def test_checkpoint_with_other_class_count_is_a_clear_error(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_file(_state(classes=5), path)
    with pytest.raises(CheckpointError, match=r"fc.weight: checkpoint \(5, 512\) vs model \(3, 512\)"):
        build_model("resnet18", str(path), 3, "folder")


class NotAStateDict:
    pass


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save(NotAStateDict(), path)
    with pytest.raises(CheckpointError, match=r"cannot load .* safely"):
        build_model("resnet18", str(path), 3, "folder")
    with pytest.raises(CheckpointError, match="does not exist"):
        build_model("resnet18", str(tmp_path / "missing.pt"), 3, "folder")


def test_torchvision_weights_names_class_counts_and_offline_error(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match=r"valid: .*IMAGENET1K_V1, IMAGENET1K_V2"):
        build_model("resnet50", "IMAGENET1K_V9", 1000, "imagenet")
    with pytest.raises(ModelError, match="predicts 1000 classes but dataset shapes has 8"):
        build_model("resnet50", "DEFAULT", 8, "shapes")
    with pytest.raises(ModelError, match="unknown model 'resnet5'"):
        build_model("resnet5", "DEFAULT", 1000, "imagenet")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ModelError) as err:
        build_model("resnet18", "DEFAULT", 1000, "imagenet")
    assert str(tmp_path / "hub" / "checkpoints") in str(err.value) and "resnet18-f37072fd.pth" in str(err.value)


def test_preprocessing_comes_from_the_weights():
    p = Preprocessing.from_weights(torchvision.models.ResNet50_Weights.IMAGENET1K_V2)
    assert (p.resize_size, p.crop_size, p.interpolation) == (232, 224, "bilinear")
    assert p.mean == (0.485, 0.456, 0.406)


def test_random_weights_are_seeded():
    a = build_model("resnet18", "random", 8, "shapes").model.fc.weight
    b = build_model("resnet18", "random", 8, "shapes").model.fc.weight
    assert torch.equal(a, b)


def test_reference_is_shapes_only():
    with pytest.raises(ModelError, match="dataset=shapes only"):
        build_model("resnet18", "reference", 1000, "imagenet")


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small"])
def test_shipped_references_are_listed_hashed_and_accurate(arch):
    path, record = checkpoints.find_reference(arch)
    assert path.parent == checkpoints.SHIPPED_DIR
    assert checkpoints.sha256(path) == record["sha256"]
    assert record["recipe"] == dataclasses.asdict(recipe_for(arch))  # trained with today's recipe
    # the checkpoint itself, not its record: 200 held-out scenes (the manifest's figure is over 1000)
    model = build_model(arch, "reference", 8, "shapes").model
    assert accuracy(model, n_images=200) >= 0.95


def test_mobilenet_v3_trains_longer():
    assert (recipe_for("mobilenet_v3_large").steps, recipe_for("mobilenet_v3_large").full_image_steps) == (600, 90)
    assert recipe_for("resnet50") == Recipe()


def test_missing_reference_is_trained_once_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMBENCH_CACHE", str(tmp_path))
    calls = []

    def fake_train(arch, recipe, device):
        calls.append(arch)
        torch.manual_seed(2)
        return torchvision.models.get_model(arch, num_classes=8), {"test_accuracy": 0.5}

    monkeypatch.setattr(build, "timed_train", fake_train)
    first = build_model("resnet34", "auto", 8, "shapes").model
    second = build_model("resnet34", "auto", 8, "shapes").model
    assert calls == ["resnet34"]
    assert (tmp_path / "checkpoints" / "resnet34_shapes.safetensors").is_file()
    assert torch.equal(first.fc.weight, second.fc.weight)

    # a corrupted cache file is detected by its hash, not loaded
    cached = tmp_path / "checkpoints" / "resnet34_shapes.safetensors"
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF
    cached.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupt"):
        build_model("resnet34", "auto", 8, "shapes")
