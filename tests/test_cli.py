"""The Hydra app end to end (small images, few steps) and the start-up validation of configs."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from cambench.config import ConfigError, validate
from cambench.data.shapes_dataset import ShapesDataset

CONF = str(Path(__file__).resolve().parent.parent / "conf")
FAST = ["runner.num_images=4", "runner.batch_size=2", "metrics.deletion_insertion.steps=4", "runner.progress=false"]


def cambench(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """Run the app; ``.output`` holds stdout and stderr (Hydra logs to stdout)."""
    args = [f"hydra.run.dir={tmp_path / 'run'}", f"runner.results_table={tmp_path / 'runs.csv'}", *overrides]
    result = subprocess.run([sys.executable, "-m", "cambench", *args], capture_output=True, text=True, timeout=300)
    result.output = result.stdout + result.stderr
    return result


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_default_run_writes_rows_summary_config_and_table_row(tmp_path):
    result = cambench(tmp_path, "model=mobilenet_v3_small", "dataset.image_size=64", *FAST)
    assert result.returncode == 0, result.output
    assert "deletion" in result.stdout and "insertion" in result.stdout
    rows = pd.read_csv(tmp_path / "run" / "per_image.csv")
    assert rows["id"].tolist() == [f"shapes-test-{i:06d}" for i in range(4)]
    assert (rows["target"] == rows["prediction"]).all()
    assert rows[["deletion", "insertion"]].apply(lambda c: c.between(0, 1)).all().all()
    summary = pd.read_csv(tmp_path / "run" / "summary.csv").set_index("metric")
    assert summary.loc["insertion", "mean"] == pytest.approx(rows["insertion"].mean())
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["config"]["model"]["name"] == "mobilenet_v3_small" and info["versions"]["torch"]
    table = pd.read_csv(tmp_path / "runs.csv")
    assert table[["model", "method", "images"]].values.tolist() == [["mobilenet_v3_small", "gradcam", 4]]


def test_unknown_method_fails_at_start_with_the_choices(tmp_path):
    result = cambench(tmp_path, "method=nosuch")
    assert result.returncode != 0
    assert "Available options in 'method'" in result.output and "gradcam" in result.output


def test_unknown_target_layer_fails_at_start_with_candidates(tmp_path):
    result = cambench(tmp_path, "model.target_layer=nosuch", "model.weights=random")
    assert result.returncode == 2
    assert "model has no module 'nosuch'" in result.output and "layer4.1" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs.csv").exists()


def test_corrupt_image_is_reported_by_path_and_finished_rows_are_kept(tmp_path):
    root = tmp_path / "images"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (40, 40), (200, 10, 10)).save(root / name / "a.png")
    (root / "dog" / "b.png").write_bytes(b"not an image at all")
    result = cambench(
        tmp_path,
        "dataset=folder",
        f"dataset.root={root}",
        "model.weights=random",
        "runner.batch_size=1",
        "runner.num_images=null",
        "metrics.deletion_insertion.steps=2",
        "runner.progress=false",
    )
    assert result.returncode == 2
    assert f"cannot read image {root / 'dog' / 'b.png'}" in result.output
    assert "Traceback" not in result.output
    rows = pd.read_csv(tmp_path / "run" / "per_image.csv")
    assert rows["id"].tolist() == ["cat/a.png", "dog/a.png"]
    assert "their rows are kept" in result.output


@pytest.mark.parametrize("model", sorted(p.stem for p in Path(CONF, "model").glob("*.yaml")))
def test_every_model_config_validates(model):
    cfg = validate(compose_cfg(f"model={model}"))
    assert cfg.model.name == model and cfg.model.weights == "auto"


@pytest.mark.parametrize("dataset", ["shapes", "imagenet", "folder", "imagenette"])
def test_every_dataset_config_validates(dataset, tmp_path):
    root = [] if dataset == "shapes" else [f"dataset.root={tmp_path}"]
    cfg = validate(compose_cfg(f"dataset={dataset}", *root))
    assert cfg.dataset.name == dataset


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("runner.target=lable", "unknown runner.target 'lable'; valid choices: prediction, label"),
        ("+runner.batchsize=3", "valid keys: batch_size"),
        ("runner.batch_size=abc", "runner:"),
        ("runner.device=gpu", "valid choices: auto, cpu, cuda, cuda:N"),
        ("model.name=resnet5", "unknown model.name 'resnet5'"),
        ("+metrics.deletion_insertion.step=3", "unknown parameter(s) step; valid: steps, blur_kernel, blur_sigma"),
        ("+metrics.nosuch={}", "unknown metric 'nosuch'; valid choices: deletion_insertion"),
    ],
)
def test_bad_configs_fail_with_the_valid_choices(override, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(override))
    assert message in str(err.value)


def test_imagenet_needs_a_root():
    with pytest.raises(ConfigError, match=r"set dataset\.root"):
        validate(compose_cfg("dataset=imagenet"))


def test_label_targets_and_bf16_autocast_in_process(tmp_path):
    from cambench.runner.run import run

    cfg = validate(
        compose_cfg(
            "model.weights=random",
            "runner.target=label",
            "runner.autocast=bf16",
            "dataset.image_size=64",
            f"runner.results_table={tmp_path / 'runs.csv'}",
            *FAST,
        )
    )
    result = run(cfg, tmp_path / "run")
    assert (result.rows["target"] == result.rows["label"]).all()
    assert result.rows["label"].tolist() == [ShapesDataset("test", 4, 64)[i].label for i in range(4)]
    assert result.summary["metric"].tolist() == ["deletion", "insertion"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_device_without_cuda_is_a_config_error():
    from cambench.device import DeviceError, resolve_device

    with pytest.raises(DeviceError, match=r"CUDA is not available; use runner\.device=cpu or auto"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
