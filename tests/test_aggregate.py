"""python -m cambench.aggregate on tiny real runs laid out as a Hydra sweep: the leaderboard's values,
intervals, best marks and baseline rows, protocol variants, the newest of a cell run twice, the pivot,
the ranking files and the pictures, and the refusals."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from matplotlib.image import imread

from cambench.analysis.aggregate import default_out
from cambench.analysis.leaderboard import LeaderboardError, build, interval, select
from cambench.analysis.plots import CELL, DPI, GRID_FILE, save_grid_data
from cambench.analysis.runs import RunsError, find_runs
from cambench.app.config import validate
from cambench.app.run import run
from cambench.cli.aggregate import main

CONF = str(Path(__file__).resolve().parent.parent / "conf")
COMMON = ["runner.num_images=8", "dataset.image_size=64", "runner.progress=false", "runner.bootstrap=50"]
COMMON += ["metrics=deletion_insertion", "metrics.deletion_insertion.steps=4", "runner.score_batch_size=64"]
SUBSTRATE = "metrics.deletion_insertion.deletion_substrate"
JOBS = [("gradcam", "zeros"), ("gradcampp", "zeros"), ("centercam", "zeros")]
JOBS += [("gradcam", "blur"), ("centercam", "blur")]
ZEROS, BLUR = f"{SUBSTRATE}=zeros", f"{SUBSTRATE}=blur"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Five real runs (resnet18, 8 shapes images at 64 px) as a sweep over method and deletion substrate,
    each with the overrides Hydra would record."""
    root = tmp_path_factory.mktemp("sweep")
    for number, (method, substrate) in enumerate(JOBS):
        overrides = [f"method={method}", *COMMON, f"{SUBSTRATE}={substrate}"]
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose("config", overrides=[*overrides, f"runner.results_table={root / 'runs.csv'}"])
        folder = root / f"{number}_{method}_resnet18"
        run(validate(cfg), folder)
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    return root


def copy(sweep: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(sweep, tmp_path / "sweep"))


def summary(sweep: Path, number: int) -> pd.DataFrame:
    method = JOBS[number][0]
    return pd.read_csv(sweep / f"{number}_{method}_resnet18" / "summary.csv").set_index("metric")


def test_leaderboard_values_best_marks_baselines_and_ranking_files(sweep, tmp_path, capsys):
    out = tmp_path / "board"
    assert main([str(sweep), "--out", str(out), "--resamples", "200"]) == 0
    board = pd.read_csv(out / "leaderboard.csv", keep_default_na=False)
    assert board[["variant", "method", "kind"]].values.tolist() == [
        [ZEROS, "gradcam", "method"],
        [ZEROS, "gradcampp", "method"],
        [ZEROS, "centercam", "method"],
        [ZEROS, "fakecam", "baseline"],
        [BLUR, "gradcam", "method"],
        [BLUR, "centercam", "method"],
        [BLUR, "fakecam", "baseline"],
    ]
    assert set(board["model"]) == {"resnet18"} and set(board["dataset"]) == {"shapes"}
    assert (board["images"] == 8).all()
    rows = board.set_index(["variant", "method"])
    for number, (method, substrate) in enumerate(JOBS):
        own, row = summary(sweep, number), rows.loc[(f"{SUBSTRATE}={substrate}", method)]
        for metric in ("deletion", "insertion", "auroc"):
            assert row[[metric, f"{metric}_ci95_low", f"{metric}_ci95_high"]].tolist() == pytest.approx(
                own.loc[metric, ["mean", "ci95_low", "ci95_high"]].tolist()
            )
        assert row["seconds_method"] == pytest.approx(own.loc["seconds_method", "mean"])
        assert row["peak_memory_mb"] == pytest.approx(own.loc["peak_memory_mb", "mean"])
    # Fake-CAM's row: its mean from the summary's baseline column (the group's newest run)
    assert rows.loc[(BLUR, "fakecam"), "deletion"] == pytest.approx(summary(sweep, 4).loc["deletion", "fakecam"])
    # best per variant and column among the methods, by direction: deletion lowest, insertion highest
    for variant, numbers in ((ZEROS, [0, 1, 2]), (BLUR, [3, 4])):
        deletion = {JOBS[n][0]: summary(sweep, n).loc["deletion", "mean"] for n in numbers}
        insertion = {JOBS[n][0]: summary(sweep, n).loc["insertion", "mean"] for n in numbers}
        for method in deletion:
            marks = rows.loc[(variant, method), "best"].split()
            assert ("deletion" in marks) == (deletion[method] == min(deletion.values()))
            assert ("insertion" in marks) == (insertion[method] == max(insertion.values()))
        assert "deletion" not in rows.loc[(variant, "fakecam"), "best"].split()
    markdown = (out / "leaderboard.md").read_text()
    best = min(range(3), key=lambda n: summary(sweep, n).loc["deletion", "mean"])
    stats = summary(sweep, best).loc["deletion"]
    assert f"**{interval(stats['mean'], stats['ci95_low'], stats['ci95_high'])}**" in markdown
    assert f"### resnet18 / shapes / {ZEROS}" in markdown and "| fakecam *(baseline)* | 8 |" in markdown
    # the ranking: by mean and direction, each method's share of resamples keeping its rank
    ranking = pd.read_csv(out / "ranking.csv")
    deletion = ranking[(ranking["metric"] == "deletion") & (ranking["variant"] == ZEROS)].set_index("method")
    assert deletion["rank"].to_dict() == rows.loc[ZEROS, "deletion"].iloc[:3].rank(method="min").astype(int).to_dict()
    assert deletion["keeps_rank"].between(0, 1).all() and (deletion["images"] == 8).all()
    assert deletion["ranking_unchanged"].iloc[0] <= deletion["keeps_rank"].min()
    tau = pd.read_csv(out / "ranking_metrics.csv")
    assert (tau[tau["metric_a"] == tau["metric_b"]]["tau"].dropna() == 1).all()
    # the substrate of deletion leaves insertion as it was: the two variants rank insertion alike
    variants = pd.read_csv(out / "ranking_variants.csv").set_index("metric")
    assert variants.loc["insertion", "tau"] == pytest.approx(1.0) and variants.loc["insertion", "methods"] == 2
    assert {variants.loc["deletion", "variant_a"], variants.loc["deletion", "variant_b"]} == {ZEROS, BLUR}
    assert "Between protocol variants" in (out / "ranking.md").read_text()
    for name in ("bars", "curves"):
        for variant in ("zeros", "blur"):
            picture = imread(out / f"{name}_resnet18_shapes_{SUBSTRATE}={variant}.png")
            assert picture.shape[0] > 300 and picture.shape[1] > 600 and picture[..., :3].std() > 0.05
    assert "written:" in capsys.readouterr().out


def test_a_cell_run_twice_keeps_the_newest_and_says_so(sweep, tmp_path, capsys):
    root = copy(sweep, tmp_path)
    again = Path(shutil.copytree(root / "0_gradcam_resnet18", root / "9_gradcam_resnet18"))
    info = json.loads((again / "run.json").read_text())
    (again / "run.json").write_text(json.dumps(info | {"finished": "2999-01-01T00:00:00+00:00"}))
    table = pd.read_csv(again / "summary.csv")
    table.loc[table["metric"] == "deletion", "mean"] = 0.125
    table.to_csv(again / "summary.csv", index=False)
    assert main([str(root), "--out", str(tmp_path / "board"), "--resamples", "10"]) == 0
    board = pd.read_csv(tmp_path / "board" / "leaderboard.csv", keep_default_na=False)
    kept = board[(board["method"] == "gradcam") & (board["variant"] == ZEROS)]
    assert len(kept) == 1 and kept["deletion"].item() == 0.125 and kept["run_dir"].item() == str(again)
    assert f"resnet18 / shapes / {ZEROS} / gradcam ran 2 times: kept the newest, {again}" in capsys.readouterr().out
    assert "ran 2 times" in (tmp_path / "board" / "leaderboard.md").read_text()


def test_variants_and_method_parameters_come_from_differing_overrides(sweep, tmp_path):
    # an outputs/ tree: two runs of the blur variant, one of them with another target and a method parameter
    root = tmp_path / "outputs"
    first = Path(shutil.copytree(sweep / "3_gradcam_resnet18", root / "2026-01-01" / "10-00-00_gradcam_resnet18"))
    second = Path(shutil.copytree(sweep / "4_centercam_resnet18", root / "2026-01-02" / "11-00-00_centercam_resnet18"))
    info = json.loads((second / "run.json").read_text())
    info["config"]["runner"]["target"] = "label"
    info["config"]["method"]["sigma"] = 0.3
    (second / "run.json").write_text(json.dumps(info))
    overrides = [f"method=centercam {' '.join(COMMON)} {BLUR} runner.target=label method.sigma=0.3"]
    (second / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides[0].split()))
    board = build(find_runs(root))
    labels = {(e.method, e.variant) for e in board.entries}
    assert labels == {("gradcam", "runner.target=prediction"), ("centercam sigma=0.3", "runner.target=label")}
    # without overrides (runs not launched by Hydra) nothing differs: no variant
    shutil.rmtree(second / ".hydra")
    shutil.rmtree(first / ".hydra")
    assert {(e.method, e.variant) for e in build(find_runs(root)).entries} == {("gradcam", ""), ("centercam", "")}
    # runs of one cell with no overrides but different configs are told apart by the config, not taken as reruns
    third = Path(shutil.copytree(sweep / "0_gradcam_resnet18", root / "2026-01-03" / "12-00-00_gradcam_resnet18"))
    shutil.rmtree(third / ".hydra")
    entries, notes = select(find_runs(root))
    assert {(e.method, e.variant) for e in entries} == {("gradcam", BLUR), ("gradcam", ZEROS), ("centercam", BLUR)}
    assert notes == []


def test_bookkeeping_and_a_metric_only_some_runs_score_make_no_variant(sweep, tmp_path):
    # as in the reference sweep of cambench.regress: one cell scores more metrics, with a parameter of its own,
    # and another batch size; it still ranks with the others, until a second run of that metric disagrees
    root = copy(sweep, tmp_path)
    key, extra = "metrics.faithfulness_correlation.runs", ["metrics=[deletion_insertion,faithfulness_correlation]"]

    def score_more(folder: Path, runs: int) -> None:
        info = json.loads((folder / "run.json").read_text())
        info["config"]["metrics"]["faithfulness_correlation"] = {"runs": runs}
        info["config"]["runner"]["batch_size"] = 4
        (folder / "run.json").write_text(json.dumps(info))
        with (folder / ".hydra" / "overrides.yaml").open("a") as file:
            file.write("".join(f"- {o}\n" for o in [*extra, f"{key}={runs}", "runner.batch_size=4"]))

    score_more(root / "1_gradcampp_resnet18", 16)
    assert {(e.method, e.variant) for e in select(find_runs(root))[0]} == {(m, f"{SUBSTRATE}={s}") for m, s in JOBS}
    score_more(root / "0_gradcam_resnet18", 32)
    variants = {e.method: e.variant for e in select(find_runs(root))[0] if e.variant.startswith(ZEROS)}
    assert variants == {"gradcam": f"{ZEROS} {key}=32", "gradcampp": f"{ZEROS} {key}=16", "centercam": ZEROS}


def test_pivot_by_variant_and_metric_selection(sweep, tmp_path):
    out = tmp_path / "board"
    assert main([str(sweep), "--out", str(out), "--by", "variant", "--metrics", "deletion_insertion"]) == 0
    board = pd.read_csv(out / "leaderboard.csv", keep_default_na=False).set_index(["variant", "method"])
    assert "auroc" not in board.columns and {"deletion", "insertion", "seconds_method"} <= set(board.columns)
    assert "seconds_deletion_insertion" in board.columns and "seconds_localisation" not in board.columns
    pivot = pd.read_csv(out / "leaderboard_by_variant.csv")
    deletion = pivot[pivot["metric"] == "deletion"].set_index("method")
    assert deletion.loc["gradcam", ZEROS] == pytest.approx(board.loc[(ZEROS, "gradcam"), "deletion"])
    assert deletion.loc["gradcam", f"{BLUR}_ci95_high"] == pytest.approx(
        board.loc[(BLUR, "gradcam"), "deletion_ci95_high"]
    )
    assert pd.isna(deletion.loc["gradcampp", BLUR])  # not run with that substrate
    winners = {v: board.loc[v][board.loc[v]["kind"] == "method"]["deletion"].idxmin() for v in (ZEROS, BLUR)}
    for method in ("gradcam", "gradcampp", "centercam"):  # the variants under which the method is best
        marks = [v for v in str(deletion.loc[method, "best"]).split("; ") if v in (ZEROS, BLUR)]
        assert marks == [v for v in (ZEROS, BLUR) if winners[v] == method]
    text = (out / "leaderboard_by_variant.md").read_text()
    assert "### deletion ↓" in text and f"| method | {ZEROS} | {BLUR} |" in text
    assert set(pd.read_csv(out / "ranking.csv")["metric"]) == {"deletion", "insertion"}


def test_heatmap_grid_of_a_sweep_from_the_runs_grid_files(sweep, tmp_path):
    root = copy(sweep, tmp_path)
    for number, (method, _) in enumerate(JOBS[:3]):
        folder = root / f"{number}_{method}_resnet18"
        ids = pd.read_csv(folder / "per_image.csv")["id"].tolist()[number : number + 4]  # 2 ids shared by all
        maps = torch.rand(4, 16, 16)
        save_grid_data(folder / GRID_FILE, method, ids, torch.rand(4, 3, 32, 32), maps, ["circle"] * 4)
    assert main([str(root), "--out", str(tmp_path / "board"), "--resamples", "10"]) == 0
    picture = imread(tmp_path / "board" / f"heatmaps_resnet18_shapes_{ZEROS}.png")
    # 2 rows (the ids all three share) and 4 columns (the image, then 3 methods)
    assert picture.shape[:2] == (round((CELL * 2 + 0.4) * DPI), round((CELL * 4 + 1.2) * DPI))
    assert picture[..., :3].std() > 0.05
    assert not (tmp_path / "board" / f"heatmaps_resnet18_shapes_{BLUR}.png").exists()  # no grid files there


def test_refusals(sweep, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no finished run under" in capsys.readouterr().err
    with pytest.raises(RunsError, match="is not a folder"):
        build(find_runs(tmp_path / "nothing"))
    assert main([str(sweep), "--out", str(tmp_path / "b"), "--metrics", "nosuch"]) == 2
    assert "no metric 'nosuch' in these runs; valid: deletion, insertion, pointing_game" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    with pytest.raises(LeaderboardError, match="cannot pivot by 'method'; valid keys: model, dataset, variant"):
        build(find_runs(sweep)).pivot("method")


def test_default_output_folder_is_named_after_the_sweep():
    assert default_out(Path("multirun/2026-11-24/09-42-38")) == Path("results/leaderboards/2026-11-24_09-42-38")
    assert default_out(Path("/data/sweeps/substrates")) == Path("results/leaderboards/substrates")
