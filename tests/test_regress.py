"""CI regression of metric scores (cambench.regress) on a tiny reference made through the same code."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from cambench.app.regress import REPORT, RegressError, Tolerances, compare, load_sweep
from cambench.cli.regress import main
from cambench.methods.base import weighted_sum
from cambench.methods.gradcam import GradCAM

TINY = """\
common: [runner.num_images=8, runner.batch_size=8, dataset.image_size=64, "runner.baselines=[]", runner.bootstrap=10,
         metrics=deletion_insertion, metrics.deletion_insertion.steps=4]
cells:
  gradcam: [method=gradcam]
  fakecam: [method=fakecam]
"""
LOCALISATION = ["pointing_game", "energy_pointing_game", "iou", "auroc", "relevance_mass", "relevance_rank"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A two-cell reference (8 images at 64 px) built with --update, with a tolerance file of its own."""
    folder = tmp_path_factory.mktemp("reference")
    sweep = folder.parent / "tiny.yaml"
    sweep.write_text(TINY)
    (folder / "tolerance.yaml").write_text("default: 1.0e-5\nmetrics:\n  deletion: {tolerance: 2.0e-5}\n")
    assert main(["--update", "--sweep", str(sweep), "--reference", str(folder), "--out", str(folder.parent / "u")]) == 0
    return folder


def test_update_writes_the_means_of_every_score_and_the_sweep(reference):
    table = pd.read_csv(reference / "reference.csv")
    assert table["cell"].unique().tolist() == ["gradcam", "fakecam"]
    assert table.loc[table["cell"] == "gradcam", "metric"].tolist() == ["deletion", "insertion", *LOCALISATION]
    rows = pd.read_csv(reference.parent / "u" / "gradcam" / "per_image.csv")
    mean = table.set_index(["cell", "metric"])["mean"]
    assert mean["gradcam", "insertion"] == pytest.approx(rows["insertion"].mean(), rel=1e-12)
    assert (table["n"] == 8).all()
    assert load_sweep(reference / "sweep.yaml").cells == {"gradcam": ["method=gradcam"], "fakecam": ["method=fakecam"]}
    assert '"torch_threads"' in (reference / "environment.json").read_text()
    # each run records its cell's overrides as Hydra would, for cambench.aggregate to tell protocols apart
    recorded = yaml.safe_load((reference.parent / "u" / "fakecam" / ".hydra" / "overrides.yaml").read_text())
    assert recorded == [*load_sweep(reference / "sweep.yaml").common, "method=fakecam"]


def test_an_unchanged_rerun_passes(reference, tmp_path, capsys):
    assert main(["--reference", str(reference), "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / REPORT)
    assert len(table) == 16 and (table["status"] == "ok").all()
    assert (table["difference"].abs() <= table["tolerance"]).all()
    assert table.loc[table["metric"] == "deletion", "tolerance"].tolist() == [2e-5, 2e-5]
    assert "16 of 16 scores within tolerance" in capsys.readouterr().out


def test_a_changed_method_formula_fails_and_lists_the_moved_scores(reference, tmp_path, monkeypatch, capsys):
    # Grad-CAM's channel weights from the absolute gradients (mean -> max would change nothing here: behind
    # global average pooling and a linear head, the gradients at layer4 are the same at every position)
    monkeypatch.setattr(GradCAM, "cam", lambda self, a, g: weighted_sum(g.abs().mean(dim=(2, 3)), a))
    assert main(["--reference", str(reference), "--out", str(tmp_path)]) == 1
    table = pd.read_csv(tmp_path / REPORT)
    moved = table[table["status"] == "drift"]
    assert set(moved["cell"]) == {"gradcam"} and {"deletion", "insertion"} <= set(moved["metric"])
    assert (table.loc[table["cell"] == "fakecam", "status"] == "ok").all()
    assert (moved["difference"].abs() > moved["tolerance"]).all()
    out, err = capsys.readouterr()
    assert "drift" in out and "deletion" in out and "scores moved" in err


def test_update_shows_what_it_changes_and_rewrites_the_reference(reference, tmp_path, monkeypatch, capsys):
    for name in ("reference.csv", "tolerance.yaml", "sweep.yaml"):
        (tmp_path / name).write_bytes((reference / name).read_bytes())
    monkeypatch.setattr(GradCAM, "cam", lambda self, a, g: weighted_sum(g.abs().mean(dim=(2, 3)), a))
    assert main(["--update", "--reference", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert "changes against the old reference:" in capsys.readouterr().out
    changes = pd.read_csv(tmp_path / "out" / REPORT).set_index(["cell", "metric"])
    new = pd.read_csv(tmp_path / "reference.csv").set_index(["cell", "metric"])["mean"]
    assert (new == changes["now"].reindex(new.index)).all() and (changes.loc["gradcam", "status"] == "drift").any()
    assert (
        new["fakecam"] == pd.read_csv(reference / "reference.csv").set_index(["cell", "metric"])["mean"]["fakecam"]
    ).all()


def test_cells_that_appear_or_disappear_fail_by_name(reference, tmp_path, capsys):
    sweep = tmp_path / "other.yaml"
    sweep.write_text(TINY.replace("fakecam: [method=fakecam]", "centercam: [method=centercam]"))
    assert main(["--reference", str(reference), "--sweep", str(sweep), "--out", str(tmp_path / "out")]) == 1
    status = pd.read_csv(tmp_path / "out" / REPORT).groupby("cell")["status"].unique().map(list).to_dict()
    assert status == {"gradcam": ["ok"], "fakecam": ["missing"], "centercam": ["new"]}
    out = capsys.readouterr().out
    assert "cells not in the reference: centercam" in out and "reference cells not in the sweep: fakecam" in out


def test_a_missing_reference_is_a_clear_error_before_any_run(reference, tmp_path, capsys):
    folder = tmp_path / "nothing"
    args = ["--reference", str(folder), "--sweep", str(reference / "sweep.yaml"), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"no reference at {folder / 'reference.csv'}: build it with python -m cambench.regress --update" in err
    assert not (tmp_path / "out").exists()


def test_a_missing_tolerance_file_names_how_to_make_one(reference, tmp_path, capsys):
    (tmp_path / "reference.csv").write_bytes((reference / "reference.csv").read_bytes())
    args = ["--reference", str(tmp_path), "--sweep", str(reference / "sweep.yaml"), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert "no tolerance file at" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("common: []\n", "'cells' must map cell names to lists of Hydra overrides"),
        ("cells: {a: method=gradcam}\n", "a must be a list of Hydra overrides"),
        ("cells: {a/b: [method=gradcam]}\n", "cell name 'a/b' may only use"),
        ("cells: {a: [runner.baselines=[]]}\n", r"not valid YAML \(line 1, column \d+\): quote overrides"),
    ],
)
def test_a_bad_sweep_definition_names_the_problem(tmp_path, text, message):
    (tmp_path / "sweep.yaml").write_text(text)
    with pytest.raises(RegressError, match=message):
        load_sweep(tmp_path / "sweep.yaml")


def test_compare_flags_nan_on_one_side_and_changed_counts():
    key = {"cell": ["c"] * 5, "metric": ["a", "b", "c", "d", "e"]}
    nan = float("nan")
    reference = pd.DataFrame(key | {"n": [8, 8, 8, 0, 8], "mean": [0.5, 0.5, 0.5, nan, 0.5]})
    now = pd.DataFrame(key | {"n": [8, 8, 8, 0, 7], "mean": [0.5 + 1e-6, 0.5 + 1e-3, nan, nan, 0.5]})
    table = compare(reference, now, Tolerances(default=1e-5, metrics={"b": 1e-2}))
    assert table["status"].tolist() == ["ok", "ok", "drift", "ok", "drift"]
    assert table["tolerance"].tolist() == [1e-5, 1e-2, 1e-5, 1e-5, 1e-5]
    assert table["difference"].iloc[1] == pytest.approx(1e-3)
