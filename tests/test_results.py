"""Summary statistics and result files."""

import math

import pandas as pd
import pytest
import torch

from cambench.analysis.statistics import bootstrap_ci, summarise
from cambench.io.writer import RunWriter, append_to_table, replaced


def test_bootstrap_interval_of_constant_and_known_data():
    assert bootstrap_ci(torch.full((10,), 0.25)) == (0.25, 0.25)
    lo, hi = bootstrap_ci(torch.tensor([0.0, 1.0] * 200), resamples=2000)
    # mean 0.5, standard error 0.5 / sqrt(400) = 0.025: the 95% interval is about 0.5 -+ 0.049
    assert abs(lo - 0.451) < 0.01 and abs(hi - 0.549) < 0.01
    assert all(math.isnan(v) for v in bootstrap_ci(torch.tensor([float("nan")])))


def test_summarise_drops_nans_per_metric():
    rows = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [float("nan"), 4.0, 4.0]})
    summary = summarise(rows, ["a", "b"], resamples=200).set_index("metric")
    assert summary.loc["a", "mean"] == 2.0 and summary.loc["a", "n"] == 3
    assert summary.loc["b", "mean"] == 4.0 and summary.loc["b", "n"] == 2
    assert summary.loc["a", "ci95_low"] >= 1.0 and summary.loc["a", "ci95_high"] <= 3.0


def test_writer_appends_rows_batch_by_batch(tmp_path):
    writer = RunWriter(tmp_path)
    writer.append([{"id": "a", "x": 1.0}])
    writer.append([{"id": "b", "x": 2.0}, {"id": "c", "x": 3.0}])
    assert writer.rows()["id"].tolist() == ["a", "b", "c"]


def test_results_table_realigns_columns_across_runs(tmp_path):
    table = tmp_path / "runs.csv"
    s1 = pd.DataFrame([{"metric": "deletion", "mean": 0.1, "ci95_low": 0.05, "ci95_high": 0.15}])
    s2 = pd.DataFrame([{"metric": "insertion", "mean": 0.7, "ci95_low": 0.6, "ci95_high": 0.8}])
    append_to_table(table, s1, {"method": "gradcam"})
    append_to_table(table, s2, {"method": "other"})
    out = pd.read_csv(table)
    assert out["method"].tolist() == ["gradcam", "other"]
    assert out["deletion"].tolist()[0] == 0.1 and math.isnan(out["deletion"].tolist()[1])
    assert out["insertion_ci95"].tolist()[1] == "[0.6000, 0.8000]"


def _append_many(table, worker, count):
    for i in range(count):
        summary = pd.DataFrame([{"metric": "deletion", "mean": i, "ci95_low": 0.0, "ci95_high": 1.0}])
        append_to_table(table, summary, {"method": f"w{worker}", "i": i})


def test_parallel_jobs_appending_to_the_results_table_lose_no_row(tmp_path):
    import multiprocessing

    table = tmp_path / "runs.csv"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(table, w, 10)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in workers)
    out = pd.read_csv(table)
    assert len(out) == 40
    assert sorted(out.groupby("method")["i"].apply(sorted).tolist()) == [list(range(10))] * 4


def test_replaced_writes_whole_files_and_a_failed_write_keeps_the_old_one(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("old\n")
    with replaced(path) as partial:
        partial.write_text("new\n")
        assert path.read_text() == "old\n"  # not replaced before the block ends
    assert path.read_text() == "new\n"
    with pytest.raises(RuntimeError, match="disk full"), replaced(path) as partial:
        partial.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "new\n" and [f.name for f in tmp_path.iterdir()] == ["table.csv"]
