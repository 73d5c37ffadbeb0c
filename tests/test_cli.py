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

from cambench.app.config import ConfigError, validate
from cambench.data.sampling import stratified_subset
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


SCORES = ["deletion", "insertion", "average_drop", "increase_in_confidence", "average_gain", "coherency"]
SCORES += ["complexity", "adcc_per_image"]
LOCALISATION = ["pointing_game", "energy_pointing_game", "iou", "auroc", "relevance_mass", "relevance_rank"]
SCORES += [*LOCALISATION, "adcc_of_means"]  # shapes has masks: the run adds localisation (runner.add_when_available)


def test_default_run_writes_rows_summary_config_and_table_row(tmp_path):
    result = cambench(tmp_path, "model=mobilenet_v3_small", "dataset.image_size=64", *FAST)
    assert result.returncode == 0, result.output
    assert "deletion" in result.stdout and "insertion" in result.stdout
    rows = pd.read_csv(tmp_path / "run" / "per_image.csv")
    subset = stratified_subset(ShapesDataset().labels(), 4, seed=0)  # seeded, one image of each of 4 classes
    assert rows["id"].tolist() == [f"shapes-test-{i:06d}" for i in subset.tolist()]
    assert rows["label"].nunique() == 4
    assert (rows["target"] == rows["prediction"]).all()
    assert rows[["deletion", "insertion"]].apply(lambda c: c.between(0, 1)).all().all()
    # measured cost: each image carries its batch's time per image and the method's declared passes
    assert (rows["seconds_method"] > 0).all() and (rows["seconds_deletion_insertion"] > 0).all()
    assert rows[["passes_forward", "passes_backward", "passes_tail"]].drop_duplicates().values.tolist() == [[1, 1, 0]]
    assert not rows["constant_map"].any()
    adcc = rows[["average_drop", "coherency", "complexity", "adcc_per_image"]]
    assert adcc.apply(lambda c: c.between(0, 1)).all().all()
    summary = pd.read_csv(tmp_path / "run" / "summary.csv").set_index("metric")
    assert summary.loc["insertion", "mean"] == pytest.approx(rows["insertion"].mean())
    assert summary.loc["insertion", "sd"] == pytest.approx(rows["insertion"].std())
    assert 0 <= summary.loc["adcc_of_means", "mean"] <= 1 and summary.loc["adcc_of_means", "n"] == 4
    assert summary.loc["seconds_method", "mean"] == pytest.approx(rows["seconds_method"].mean())
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["config"]["model"]["name"] == "mobilenet_v3_small" and info["versions"]["torch"]
    assert info["timings"]["split"] == {"mode": "fx", "layers": ["features.12"], "max_difference": 0.0}
    assert info["timings"]["images"] == "4 images, 4 classes, 1 per class (seeded subset of 10000)"
    table = pd.read_csv(tmp_path / "runs.csv")
    assert table[["model", "method", "images"]].values.tolist() == [["mobilenet_v3_small", "gradcam", 4]]
    # mean curves of the method and the baseline, for plotting: 4 steps -> 5 points on [0, 1]
    curves = pd.read_csv(tmp_path / "run" / "curves.csv")
    deletion = curves[(curves["explainer"] == "gradcam") & (curves["curve"] == "deletion")]
    assert deletion["x"].tolist() == [0, 0.25, 0.5, 0.75, 1] and set(curves["explainer"]) == {"gradcam", "fakecam"}
    mean = deletion["mean"].to_numpy()  # the area is linear in the curve: AUC of the mean curve = mean AUC
    assert (mean.sum() - mean[0] / 2 - mean[-1] / 2) / 4 == pytest.approx(rows["deletion"].mean(), rel=1e-5)
    # the Fake-CAM sanity row: the same images and classes, the same metrics, its means beside the method's
    fake = pd.read_csv(tmp_path / "run" / "per_image_fakecam.csv")
    assert fake["id"].tolist() == rows["id"].tolist() and fake["target"].tolist() == rows["target"].tolist()
    assert (fake["coherency"] == 1).all() and (fake["complexity"] == (64 * 64 - 1) / (64 * 64)).all()
    assert summary.loc["average_drop", "fakecam"] == pytest.approx(fake["average_drop"].mean())
    assert summary.loc["average_drop", "fakecam"] < 0.05  # Poppi et al.: Fake-CAM's Average Drop is about 0
    assert summary.loc["adcc_per_image", "fakecam"] < 1e-3  # and ADCC exposes it
    flagged = summary["flag"].fillna("")
    assert (flagged == "fakecam >= method").tolist() == [
        (summary.loc[m, "fakecam"] <= summary.loc[m, "mean"]) if m in ("deletion", "average_drop", "complexity")
        else (summary.loc[m, "fakecam"] >= summary.loc[m, "mean"]) if m in SCORES else False
        for m in summary.index
    ]  # fmt: skip
    assert "fakecam >= method" in result.stdout
    assert "average_drop" in table.loc[0, "baseline_flags"]


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
        ("+metrics.deletion_insertion.step=3", "steps: int = 16, pixels_per_step: int | None = None, final_point"),
        (
            "metrics.deletion_insertion.steps=abc",
            "metrics.deletion_insertion: steps: Value 'abc' of type 'str' could not",
        ),
        ("metrics.deletion_insertion.steps=0", "deletion_insertion.steps and pixels_per_step must be >= 1"),
        ("+metrics.nosuch={}", "unknown metric 'nosuch'; valid choices: adcc, class_sensitivity, confidence"),
        ("+metrics.confidence={}", "metrics adcc and confidence both write average_drop: keep one of them"),
        ("runner.batch_size=0", "runner.batch_size must be >= 1, got 0"),
        ("runner.num_images=-1", "runner.num_images must be >= 1, got -1"),
        ("runner.score_batch_size=abc", "runner.score_batch_size must be auto or an integer >= 1"),
        ("+method.samples=3", "method: unknown parameter 'samples'"),
        ("method=smoothgradcampp", None),
        ("metrics=all", None),
        (
            "method=smoothgradcampp method.samples=many",
            "method: samples: Value 'many' of type 'str' could not be converted",
        ),
        ("method=smoothgradcampp method.samples=0", "smoothgradcampp needs samples >= 1"),
        ("method=reciprocam method.kernel=box", "unknown reciprocam kernel 'box'; valid: onehot, gaussian"),
        ("model.target_layer=[]", "model.target_layer must be a module path or a list of them"),
    ],
)
def test_bad_configs_fail_with_the_valid_choices(override, message):
    if message is None:  # a valid config, as a control
        validate(compose_cfg(*override.split()))
        return
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(*override.split()))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_method_parameter_errors_name_the_valid_parameters():
    with pytest.raises(
        ConfigError, match=r"unknown parameter 'std' \(valid parameters: samples: int = 4, sigma: float = 0.3"
    ):
        validate(compose_cfg("method=smoothgradcampp", "+method.std=1"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=cam", "model=vgg11_bn"], "cam needs global average pooling and one linear layer"),
        (["model.target_layer=fc"], "target layer fc outputs shape (1, 8) (2-D)"),
        (["model.target_layer=avgpool"], "no spatial extent (1 x 1)"),
        (["model.target_layer=[layer3,layer4]"], "method gradcam takes one target layer, got 2"),
        (["method=layercam", "model.target_layer=[layer4.0.downsample,layer4.0.conv1]"], "lie on parallel branches"),
    ],
)
def test_model_problems_fail_at_start_with_the_reason(tmp_path, overrides, message):
    result = cambench(tmp_path, "model.weights=random", *overrides, *FAST)
    assert result.returncode == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "per_image.csv").exists()


def test_imagenet_needs_a_root():
    with pytest.raises(ConfigError, match=r"set dataset\.root"):
        validate(compose_cfg("dataset=imagenet"))


def test_label_targets_and_bf16_autocast_in_process(tmp_path):
    from cambench.app.run import run

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
    expected = [int(row.split("-")[-1]) for row in result.rows["id"]]
    assert result.rows["label"].tolist() == [ShapesDataset(image_size=64)[i].label for i in expected]
    assert result.summary["metric"].tolist()[:17] == [*SCORES, "seconds_method", "seconds_deletion_insertion"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_device_without_cuda_is_a_config_error():
    from cambench.device import DeviceError, resolve_device

    with pytest.raises(DeviceError, match=r"CUDA is not available; use runner\.device=cpu or auto"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_ground_truth_metrics_join_runs_whose_dataset_has_masks():
    assert list(validate(compose_cfg()).metrics) == ["deletion_insertion", "adcc", "localisation"]
    assert "localisation" not in validate(compose_cfg("runner.add_when_available=[]")).metrics
    assert "localisation" not in validate(compose_cfg("dataset=imagenet", "dataset.root=/data")).metrics
    with_boxes = validate(compose_cfg("dataset=imagenet", "dataset.root=/data", "dataset.boxes_dir=/boxes"))
    assert "localisation" in with_boxes.metrics
    tolerant = validate(compose_cfg("metrics=[adcc,localisation]", "metrics.localisation.tolerance=15"))
    assert tolerant.metrics.localisation.tolerance == 15  # asked for: kept as configured
    with pytest.raises(ConfigError, match=r"unknown runner\.add_when_available entry 'nosuch'"):
        validate(compose_cfg("runner.add_when_available=[nosuch]"))


def test_presets_compose_with_other_metrics():
    cfg = validate(compose_cfg("metrics=[poppi,adcc]"))
    assert list(cfg.metrics) == ["deletion_insertion", "adcc", "localisation"]
    poppi = cfg.metrics.deletion_insertion
    assert (poppi.steps, poppi.final_point, poppi.deletion_substrate, poppi.insertion_substrate) == (
        100,
        False,
        "black",
        "black",
    )
    rise = validate(compose_cfg("metrics=rise")).metrics.deletion_insertion
    assert (rise.pixels_per_step, rise.deletion_substrate, rise.insertion_substrate) == (224, "zeros", "blur")
    with pytest.raises(ConfigError, match="deletion_substrate must be one of"):
        validate(compose_cfg("metrics.deletion_insertion.deletion_substrate=grey"))


def test_every_metric_in_one_run(tmp_path):
    from cambench.app.run import run

    overrides = ["metrics=all", "metrics.faithfulness_correlation.runs=4", "metrics.faithfulness_correlation.subset=16"]
    overrides += ["metrics.infidelity.samples=2", "model.weights=random", "dataset.image_size=64"]
    cfg = validate(compose_cfg(*overrides, f"runner.results_table={tmp_path / 'runs.csv'}", *FAST))
    faithfulness = ["deletion_insertion", "adcc", "faithfulness_correlation", "infidelity", "road"]
    assert list(cfg.metrics) == [*faithfulness, "localisation"]  # shapes has masks
    result = run(cfg, tmp_path / "run")
    scores = [*SCORES[:8], "road_morf", "road_lerf", "road_difference", "faithfulness_correlation", "infidelity"]
    assert result.rows[scores].notna().all().all() and (result.rows["infidelity"] >= 0).all()
    assert result.rows["faithfulness_correlation"].between(-1, 1).all()
    road = result.rows[["road_morf", "road_lerf"]]
    assert road.apply(lambda c: c.between(0, 1)).all().all()
    assert (result.rows["road_difference"] == result.rows["road_lerf"] - result.rows["road_morf"]).all()
    fake = pd.read_csv(tmp_path / "run" / "per_image_fakecam.csv")
    assert fake["id"].tolist() == result.rows["id"].tolist() and fake[scores[:-2]].notna().all().all()
    # Fake-CAM's map is 1 but at one pixel: nearly every subset has the same mass, so r is mostly undefined
    assert {"fakecam", "flag"} <= set(result.summary.columns)
