"""python -m cambench.compare: pairing by image id, exact paired differences, Wilcoxon and Holm's
correction by hand, and the refusal of runs on different images."""

import json

import pandas as pd
import pytest

from cambench.analysis.compare import compare, holm, load_run
from cambench.cli.compare import main


def write_run(folder, method, ids, deletion, insertion):
    folder.mkdir(parents=True)
    config = {"method": {"name": method}, "model": {"name": "resnet18"}, "metrics": {"deletion_insertion": {}}}
    (folder / "run.json").write_text(json.dumps({"config": config}))
    rows = pd.DataFrame({"id": ids, "deletion": deletion, "insertion": insertion})
    rows.to_csv(folder / "per_image.csv", index=False)
    return folder


def test_holm_step_down_by_hand():
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, 0.04 -> monotone: 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, float("nan"), 0.9])[0] == pytest.approx(1.0)


def test_paired_differences_wilcoxon_and_the_better_run(tmp_path):
    ids = [f"img{i}" for i in range(10)]
    base = [0.1 * i for i in range(10)]
    a = write_run(tmp_path / "a", "gradcam", ids, base, base)
    # b: rows in another order, deletion 0.05 lower everywhere (better), insertion the same but image 0 higher
    b_ins = [v + (0.2 if i == 0 else 0.0) for i, v in enumerate(base)]
    b = write_run(tmp_path / "b", "scorecam", ids[::-1], [v - 0.05 for v in base][::-1], b_ins[::-1])
    c = write_run(tmp_path / "c", "fakecam", ids, [v + 0.3 for v in base], base)
    table = compare([load_run(a), load_run(b), load_run(c)], resamples=200).set_index(["metric", "a", "b"])
    row = table.loc[("deletion", "gradcam/resnet18", "scorecam/resnet18")]
    assert row["n"] == 10 and row["diff_b_minus_a"] == pytest.approx(-0.05)
    assert row["ci95_low"] == pytest.approx(-0.05) and row["ci95_high"] == pytest.approx(-0.05)
    assert row["p_wilcoxon"] == pytest.approx(2 / 2**10)  # exact: all 10 differences of one sign
    # three pairs on deletion: Holm multiplies the smallest p by 3 (all three are 2 / 2**10 here)
    assert row["p_holm"] == pytest.approx(3 * 2 / 2**10)
    assert row["better"] == "scorecam/resnet18"  # lower deletion is better
    assert table.loc[("deletion", "gradcam/resnet18", "fakecam/resnet18"), "better"] == "gradcam/resnet18"
    one = table.loc[("insertion", "gradcam/resnet18", "scorecam/resnet18")]
    assert one["diff_b_minus_a"] == pytest.approx(0.02) and one["p_wilcoxon"] == 1.0  # one nonzero difference
    assert one["better"] == "no significant difference"
    assert table.loc[("insertion", "gradcam/resnet18", "fakecam/resnet18"), "p_wilcoxon"] == 1.0  # all ties


def test_runs_on_different_images_are_refused(tmp_path, capsys):
    a = write_run(tmp_path / "a", "gradcam", ["x", "y"], [0.1, 0.2], [0.5, 0.6])
    b = write_run(tmp_path / "b", "scorecam", ["x", "z"], [0.1, 0.2], [0.5, 0.6])
    assert main([str(a), str(b)]) == 2
    assert "scored different images (2 and 2, 1 in common): rerun with the same dataset" in capsys.readouterr().err
    assert main([str(a), str(tmp_path / "nothing")]) == 2
    assert "is not a finished run" in capsys.readouterr().err
    out = tmp_path / "table.csv"
    c = write_run(tmp_path / "c", "gradcam", ["y", "x"], [0.3, 0.1], [0.5, 0.6])
    assert main([str(a), str(c), "--out", str(out)]) == 0
    assert pd.read_csv(out)["a"].tolist() == ["0:gradcam/resnet18", "0:gradcam/resnet18"]  # same label: numbered
