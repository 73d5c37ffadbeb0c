"""Saved and imported maps scored without their method (method=saved, python -m cambench.evaluate):
a run's saved maps score as the run did, a hand-made .npz is scored like the same map from a
method, and what cannot work fails with the reason."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from cambench.app.config import ConfigError, validate
from cambench.app.run import preflight, run
from cambench.cli.evaluate import METRICS, arguments
from cambench.data.sampling import stratified_subset
from cambench.data.shapes_dataset import ShapesDataset
from cambench.io.maps import MapsError, load_maps, save_maps
from cambench.methods import MethodError

CONF = str(Path(__file__).resolve().parent.parent / "conf")
TINY = ["dataset.image_size=64", "runner.progress=false", "runner.bootstrap=20"]
STEPS = "metrics.deletion_insertion.steps=4"
COSTS = ("seconds_", "peak_memory_mb")


def config(tmp_path: Path, *overrides: str):
    table = f"runner.results_table={tmp_path / 'runs.csv'}"
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return validate(compose("config", overrides=[*TINY, table, *overrides]))


def shapes_ids(n: int) -> list[str]:
    """The ids of the images a run of ``n`` shapes images evaluates (runner.seed=0)."""
    return [f"shapes-test-{i:06d}" for i in stratified_subset(ShapesDataset().labels(), n, seed=0).tolist()]


def centred_blob(size: int, sigma: float = 0.25) -> torch.Tensor:
    """Center-CAM's map, written out: a Gaussian centred on the image, sigma relative to its side."""
    y = torch.arange(size) - (size - 1) / 2
    return torch.exp(-(y[:, None] ** 2 + y[None, :] ** 2) / (2 * (sigma * size) ** 2))


def test_saved_maps_score_as_the_run_that_saved_them(tmp_path):
    common = ["model.weights=random", "runner.num_images=8", "runner.batch_size=4", "runner.baselines=[]"]
    common += ["metrics=deletion_insertion", STEPS]  # and localisation: shapes has masks
    original = run(config(tmp_path, *common, "runner.save_maps=true", "runner.target=label"), tmp_path / "original")
    saved = load_maps(original.out_dir)
    assert saved.ids == original.rows["id"].tolist()
    assert saved.maps.shape == (8, 2, 2)  # Grad-CAM's raw maps at layer4 of a 64 px input, float32
    assert saved.targets.tolist() == original.rows["label"].tolist()

    evaluated = run(config(tmp_path, *common, "method=saved", f"method.path={original.out_dir}"), tmp_path / "again")
    # without runner.target=label, the stored classes (the labels) are explained, not the predictions
    assert (original.rows["label"] != original.rows["prediction"]).any()
    assert evaluated.rows["target"].tolist() == original.rows["label"].tolist()
    scores = [c for c in original.rows.columns if not c.startswith(COSTS) and not c.startswith("passes_")]
    assert {"deletion", "insertion", "pointing_game"} <= set(scores)
    pd.testing.assert_frame_equal(evaluated.rows[scores], original.rows[scores])  # bit for bit
    assert evaluated.rows["passes_backward"].eq(0).all()  # one forward pass, no gradients


def test_an_imported_npz_is_scored_like_the_same_map_from_a_method(tmp_path):
    ids = shapes_ids(4)
    maps = centred_blob(64).expand(5, 64, 64)
    save_maps(tmp_path / "blobs.npz", [*ids, "an-image-the-run-does-not-evaluate"], maps)
    args = [str(tmp_path / "blobs.npz"), f"hydra.run.dir={tmp_path / 'run'}", f"runner.results_table={tmp_path / 'r'}"]
    args += [*TINY, STEPS, "runner.num_images=4", "runner.batch_size=2", "runner.baselines=[centercam]"]
    result = subprocess.run([sys.executable, "-m", "cambench.evaluate", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "saved on resnet18 / shapes: 4 images" in result.stdout
    rows, center = (pd.read_csv(tmp_path / "run" / name) for name in ("per_image.csv", "per_image_centercam.csv"))
    assert rows["id"].tolist() == ids and (rows["target"] == rows["prediction"]).all()  # no targets: the prediction
    assert {"deletion", "average_drop", "pointing_game"} <= set(rows.columns)  # evaluate's default metrics
    scores = [c for c in rows.columns if not c.startswith(COSTS)]
    pd.testing.assert_frame_equal(rows[scores], center[scores])  # the same map as Center-CAM's, the same scores


def test_metrics_that_need_new_maps_fail_at_start_naming_them(tmp_path):
    save_maps(tmp_path / "maps.npz", shapes_ids(4), torch.rand(4, 7, 7))
    saved = ["method=saved", f"method.path={tmp_path / 'maps.npz'}"]
    with pytest.raises(ConfigError, match=r"^metric adcc needs a method that makes maps of new inputs or classes"):
        preflight(config(tmp_path, *saved, "metrics=adcc"))
    message = r"metric adcc needs .*; metric sensitivity needs .* with method=saved cannot give; drop these metrics"
    with pytest.raises(ConfigError, match=message):
        preflight(config(tmp_path, *saved, "metrics=[deletion_insertion,adcc,sensitivity]"))
    with pytest.raises(ConfigError, match=r"method: set method\.path"):
        config(tmp_path, "method=saved")
    with pytest.raises(ConfigError, match=r"method\.path /nowhere does not exist"):
        config(tmp_path, "method=saved", "method.path=/nowhere")


def test_images_without_a_map_are_named(tmp_path):
    ids = shapes_ids(4)
    save_maps(tmp_path / "three.npz", ids[1:], torch.rand(3, 7, 7), torch.tensor([0, 1, 2]))
    saved = ["method=saved", f"method.path={tmp_path / 'three.npz'}", "metrics=map_complexity"]
    cfg = config(tmp_path, *saved, "runner.num_images=4", "runner.batch_size=4", "runner.baselines=[]")
    message = rf"^1 of the 4 images of this batch have no map in .*three\.npz \(e\.g\. {ids[0]}\)"
    with pytest.raises(MethodError, match=message):
        run(cfg, tmp_path / "run")


def test_maps_files_in_the_wrong_format_are_named_with_the_problem(tmp_path):
    np.savez(tmp_path / "no_maps.npz", ids=np.array(["a"]), heat=np.zeros((1, 2, 2)))
    np.savez(tmp_path / "flat.npz", ids=np.array(["a", "b"]), maps=np.zeros((2, 4)))
    np.savez(tmp_path / "objects.npz", ids=np.array(["a"], dtype=object), maps=np.zeros((1, 2, 2)))
    np.savez(tmp_path / "twice.npz", ids=np.array(["a", "a"]), maps=np.zeros((2, 2, 2)))
    problems = {
        "no_maps.npz": r"no_maps\.npz has no maps array \(it has ids, heat\)",
        "flat.npz": r"want ids \(N,\), maps \(N, H, W\) .* got ids \(2,\), maps \(2, 4\)",
        "objects.npz": r"cannot read .*objects\.npz .* ids must be strings",
        "twice.npz": r"holds some image ids more than once",
    }
    for name, message in problems.items():
        with pytest.raises(MapsError, match=message):
            load_maps(tmp_path / name)
    with pytest.raises(MapsError, match=r"neither an \.npz file nor a folder of them"):
        load_maps(tmp_path / "nothing")
    # a user's file: any float dtype and resolution, targets optional
    np.savez(tmp_path / "mine.npz", ids=np.array(["a", "b"]), maps=np.ones((2, 3, 5), np.float16), targets=[4, 2])
    mine = load_maps(tmp_path / "mine.npz")
    assert mine.ids == ["a", "b"] and mine.maps.dtype == torch.float32 and mine.targets.tolist() == [4, 2]


def test_evaluate_passes_the_maps_to_the_app_and_defaults_to_metrics_without_new_maps(tmp_path):
    path = tmp_path / "it's, mine=1.npz"
    path.touch()
    assert arguments([str(path), "model=resnet18"]) == [
        "method=saved",
        f"method.path='{str(path).replace(chr(39), chr(92) + chr(39))}'",
        METRICS,
        "model=resnet18",
    ]
    assert METRICS not in arguments([str(path), "metrics=localisation"])
    with pytest.raises(SystemExit, match=r"usage: python -m cambench\.evaluate MAPS_FILE_OR_RUN_DIR"):
        arguments(["model=resnet18"])
