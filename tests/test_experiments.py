"""The paper protocols (conf/experiment/): their configs and full grids, their sweeps shrunk to a cell or
two on a tiny ImageNet-layout folder with random weights, the published values they ship, the dataset's
resize / crop options they use, and the side-by-side report (python -m cambench.report)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from PIL import Image

from cambench.analysis import report
from cambench.analysis.runs import find_runs
from cambench.app.config import validate
from cambench.app.run import preflight, run
from cambench.cli.report import main as report_main
from cambench.data.base import DatasetError
from cambench.data.preprocessing import Preprocessing
from cambench.data.registry import DATASETS
from cambench.methods import METHODS
from cambench.models.build import available_models

CONF = str(Path(__file__).resolve().parent.parent / "conf")
ROOT = "dataset.root=/data/imagenet/val"
GRIDS = {
    "poppi2021": (
        {"resnet18", "resnet50", "vgg16"},
        {"gradcam", "gradcampp", "smoothgradcampp", "scorecam", "reciprocam", "fakecam"},
    ),
    "scorecam2020": ({"vgg16"}, {"gradcam", "gradcampp", "scorecam"}),
    "rise2018": ({"resnet50", "vgg16"}, {"gradcam", "gradcampp", "scorecam"}),
}
# a few cells, 2 images of 32 px (64 for VGG: its last feature map must not be 1 x 1), few steps
TINY = ["model.weights=random", "runner.num_images=2", "runner.batch_size=2", "runner.bootstrap=20"]
TINY += ["runner.progress=false", "dataset.resize_size=32", "dataset.crop_size=32"]


def compose_cfg(*overrides: str, hydra: bool = False):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def grid(experiment: str) -> list[list[str]]:
    """Every cell of the experiment's sweep (hydra.sweeper.params) as overrides, as the basic sweeper expands it."""
    params = compose_cfg(f"experiment={experiment}", ROOT, hydra=True).hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    axes = [
        [
            f"{o.get_key_element()}={v}"
            for v in (o.sweep_string_iterator() if o.is_sweep_override() else [o.get_value_element_as_str()])
        ]
        for o in parsed
    ]
    return [list(cell) for cell in itertools.product(*axes)]


@pytest.fixture
def imagenet(tmp_path: Path) -> list[str]:
    """Overrides for a tiny ImageNet validation folder: 4 wnid folders, a 48 x 40 image each, and the class index."""
    wnids = ["n01440764", "n01443537", "n01484850", "n01491361"]
    generator = torch.Generator().manual_seed(0)
    for i, wnid in enumerate(wnids):
        (tmp_path / "val" / wnid).mkdir(parents=True)
        pixels = torch.randint(0, 256, (40, 48, 3), dtype=torch.uint8, generator=generator)
        Image.fromarray(pixels.numpy()).save(tmp_path / "val" / wnid / f"img{i}.png")
    index = tmp_path / "index.json"
    index.write_text(json.dumps({w: 10 * i for i, w in enumerate(wnids)}))
    return [f"dataset.root={tmp_path / 'val'}", f"dataset.class_index_file={index}"]


@pytest.mark.parametrize("experiment", sorted(GRIDS))
def test_every_cell_of_an_experiments_grid_composes_validates_and_passes_preflight(experiment):
    cells = grid(experiment)
    models, methods = GRIDS[experiment]
    assert len(cells) == len(models) * len(methods)
    seen = set()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        for cell in cells:
            cfg = validate(compose("config", overrides=[f"experiment={experiment}", ROOT, *cell]))
            preflight(cfg)  # target layers, the method on the model, the metrics' needs: no weights loaded
            seen.add((cfg.model.name, cfg.method.name))
            assert cfg.dataset.name == "imagenet" and cfg.model.weights == "IMAGENET1K_V1"
            assert cfg.runner.target == "prediction" and cfg.runner.baselines == []
    assert seen == set(itertools.product(models, methods))


def test_each_experiment_sets_its_papers_protocol_and_the_default_run_is_unchanged():
    poppi = validate(compose_cfg("experiment=poppi2021", ROOT))
    assert (poppi.dataset.resize_size, poppi.dataset.crop_size, poppi.runner.num_images) == (224, 224, None)
    assert set(poppi.metrics) == {"deletion_insertion", "adcc"}
    curves = poppi.metrics.deletion_insertion
    assert (curves.steps, curves.final_point) == (100, False)  # 1% steps, scored at 0%, ..., 99%
    assert curves.deletion_substrate == curves.insertion_substrate == "black"
    score = validate(compose_cfg("experiment=scorecam2020", ROOT))
    assert set(score.metrics) == {"deletion_insertion", "confidence"} and score.metrics.deletion_insertion.steps == 100
    assert (score.runner.num_images, score.dataset.resize_size, score.dataset.crop_size) == (2000, None, None)
    rise = validate(compose_cfg("experiment=rise2018", ROOT)).metrics
    assert set(rise) == {"deletion_insertion"} and rise.deletion_insertion.pixels_per_step == 224
    default = compose_cfg(hydra=True)
    assert default.dataset.name == "shapes" and default.model.weights == "auto" and default.runner.num_images == 64
    assert not default.hydra.sweeper.params and default.runner.baselines == ["fakecam"]


def test_the_dataset_resize_and_crop_replace_the_weights_own(tmp_path, imagenet):
    build = DATASETS["imagenet"].build
    cfg = validate(compose_cfg("dataset=imagenet", *imagenet, "dataset.resize_size=40", "dataset.crop_size=24")).dataset
    assert build(cfg, Preprocessing())[0].image.shape == (3, 24, 24)
    cfg = validate(compose_cfg("dataset=imagenet", *imagenet, "dataset.resize_size=20")).dataset
    with pytest.raises(DatasetError, match=r"dataset.crop_size \(224\) .* resize \(dataset.resize_size, 20\)"):
        build(cfg, Preprocessing())  # the weights' 224 crop of a 20 px resize would pad
    cfg = validate(compose_cfg("dataset=folder", f"dataset.root={tmp_path / 'val'}", "dataset.crop_size=16")).dataset
    assert DATASETS["folder"].build(cfg, Preprocessing(resize_size=32, crop_size=32))[0].image.shape == (3, 16, 16)


def test_published_values_hold_the_papers_numbers():
    poppi, score, rise = (report.published(name) for name in ("poppi2021", "scorecam2020", "rise2018"))
    assert report.experiments() == ["poppi2021", "rise2018", "scorecam2020"]
    assert (len(poppi), len(score), len(rise)) == (105, 12, 0)
    for table in (poppi, score):
        assert set(table["metric"]) <= {metric for metric, _ in report.OURS.values()}
        assert set(table["model"]) <= set(available_models()) and set(table["method"]) <= set(METHODS)
    value = poppi.set_index(report.KEYS)["value"]
    assert value["resnet18", "gradcam", "Average Drop"] == 42.90
    assert value["resnet18", "reciprocam", "ADCC"] == 79.08
    assert value["resnet50", "scorecam", "Insertion"] == 54.16
    assert value["resnet50", "smoothgradcampp", "Deletion"] == 15.21
    assert value["vgg16", "gradcam", "Coherency"] == 69.20
    assert value["vgg16", "gradcampp", "Complexity"] == 26.33
    assert value["vgg16", "scorecam", "Increase in Confidence"] == 24.75
    assert set(poppi["unit"]) == {"percent"} and set(poppi["source"]) == {"arXiv:2209.14074"}
    assert poppi.groupby("aggregation")["metric"].unique().map(set).to_dict() == {
        "of_means": {"ADCC"},
        "mean": {"Average Drop", "Increase in Confidence", "Deletion", "Insertion", "Coherency", "Complexity"},
    }
    value = score.set_index(["method", "metric"])["value"]
    assert value["gradcam", "Average Drop"] == 47.8 and value["scorecam", "Increase in Confidence"] == 30.6
    assert value["gradcampp", "Insertion"] == 0.346 and value["scorecam", "Deletion"] == 0.077
    assert score.groupby("unit")["metric"].unique().map(set).to_dict() == {
        "percent": {"Average Drop", "Increase in Confidence"},
        "fraction": {"Deletion", "Insertion"},
    }


def test_a_poppi2021_sweep_from_the_command_line_and_its_report_beside_recipro_cams_table(tmp_path, imagenet):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "cambench", "-m", "experiment=poppi2021", *imagenet, *TINY]
    command += ["model=resnet18", "method=gradcam,fakecam", "metrics.deletion_insertion.steps=10"]
    command += [f"hydra.sweep.dir={sweep}", f"runner.results_table={tmp_path / 'runs.csv'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = find_runs(sweep)  # the grid (hydra.sweeper.params) with the command line's model and methods
    assert sorted((r.model, r.method) for r in runs) == [("resnet18", "fakecam"), ("resnet18", "gradcam")]
    config = runs[0].config  # the experiment's protocol, with the test's shrinking overrides
    assert config["metrics"]["deletion_insertion"]["deletion_substrate"] == "black" and "adcc" in config["metrics"]
    assert config["dataset"]["crop_size"] == 32 and config["runner"]["baselines"] == []

    assert report_main(["poppi2021", str(sweep), "--out", str(tmp_path / "report")]) == 0
    table = pd.read_csv(tmp_path / "report" / "report.csv")
    gradcam = table[table["method"] == "gradcam"].set_index("ours")
    summary = next(r for r in runs if r.method == "gradcam").summary.set_index("metric")["mean"]
    assert len(gradcam) == 8 and gradcam["published"].notna().all() and (gradcam["unit"] == "percent").all()
    assert gradcam.loc["average_drop", "published"] == 42.90
    assert gradcam.loc["average_drop", "mean"] == pytest.approx(100 * summary["average_drop"])
    assert gradcam.loc["insertion", "difference"] == pytest.approx(100 * summary["insertion"] - 41.47)
    # both of our ADCCs beside the paper's one (of the means): the aggregations are named
    adcc = gradcam.loc[["adcc_per_image", "adcc_of_means"]]
    assert adcc["published"].tolist() == [69.98, 69.98] and adcc["published_aggregation"].tolist() == ["of_means"] * 2
    assert adcc["aggregation"].tolist() == ["mean", "of_means"]
    fake = table[table["method"] == "fakecam"]
    assert len(fake) == 8 and fake["published"].isna().all()
    assert fake.set_index("ours").loc["coherency", "mean"] == pytest.approx(100)  # Fake-CAM's map is its own
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| resnet18 | gradcam | ADCC | mean of per-image values (paper: of the dataset means) |" in markdown
    assert "Published cells without a run here: resnet18/gradcampp" in markdown
    with pytest.raises(report.ReportError, match="was run with experiment=poppi2021, not scorecam2020"):
        report.report("scorecam2020", sweep, tmp_path / "wrong")
    with pytest.raises(report.ReportError, match="choose one of poppi2021, rise2018, scorecam2020"):
        report.published("poppi2020")


@pytest.mark.parametrize(
    ("experiment", "cell"),
    [
        ("scorecam2020", ["method=gradcam", "dataset.resize_size=64", "dataset.crop_size=64"]),
        ("rise2018", ["model=resnet18", "method=gradcampp"]),
    ],
)
def test_a_cell_of_scorecam2020_and_rise2018_and_their_reports(tmp_path, imagenet, experiment, cell):
    overrides = [f"experiment={experiment}", *imagenet, *TINY, *cell, f"runner.results_table={tmp_path / 'runs.csv'}"]
    if experiment == "scorecam2020":
        overrides.append("metrics.deletion_insertion.steps=4")
    result = run(validate(compose_cfg(*overrides)), tmp_path / "sweep" / "0")
    table = report.report(experiment, tmp_path / "sweep", tmp_path / "report")
    columns = {"scorecam2020": ["average_drop", "increase_in_confidence", "deletion", "insertion"]}
    assert table["ours"].tolist() == columns.get(experiment, ["deletion", "insertion"])
    mean = result.summary.set_index("metric")["mean"]
    if experiment == "scorecam2020":  # VGG16's published row beside ours, in the paper's units
        assert table["published"].tolist() == [47.8, 19.6, 0.089, 0.357]
        assert table["mean"].tolist() == pytest.approx([100, 100, 1, 1] * mean[columns[experiment]])
        assert table["unit"].tolist() == ["percent", "percent", "fraction", "fraction"]
    else:  # no published values ship: ours alone, as fractions
        assert table["published"].isna().all() and table["mean"].tolist() == pytest.approx(
            mean[["deletion", "insertion"]]
        )
        assert "No published values ship for rise2018" in (tmp_path / "report" / "report.md").read_text()
