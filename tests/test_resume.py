"""Resumable runs (runner.resume): a run killed part way and resumed ends with the rows, summary,
curves and saved maps of an uninterrupted run; a finished run is skipped; another config starts
afresh. Random draws are seeded per batch, so a batch's draws do not depend on the batches before."""

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from cambench.app.config import validate
from cambench.app.resume import STARTED, STATE, fingerprint
from cambench.app.run import run
from cambench.io.maps import load_maps
from cambench.io.writer import RunWriter, complete_rows
from cambench.models.engine import Stream, batch_seed

CONF = str(Path(__file__).resolve().parent.parent / "conf")
TINY = ["dataset.image_size=64", "runner.batch_size=4", "runner.progress=false", "runner.bootstrap=20"]
TINY += ["runner.score_batch_size=8", "metrics.deletion_insertion.steps=4"]
# a stochastic method and baseline, a seeded metric and a curve metric; 3 batches of 4
STOCHASTIC = ["method=smoothgradcampp", "method.samples=2", "runner.baselines=[noisecam]", "runner.num_images=12"]
STOCHASTIC += ["metrics=[deletion_insertion,faithfulness_correlation]", "runner.save_maps=true"]
STOCHASTIC += ["metrics.faithfulness_correlation.runs=4", "metrics.faithfulness_correlation.subset=16"]
COSTS = ("seconds_", "peak_memory_mb")


def config(tmp_path: Path, *overrides: str):
    table = f"runner.results_table={tmp_path / 'runs.csv'}"
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return validate(compose("config", overrides=[*TINY, table, *overrides]))


class Killed(Exception):
    pass


def kill_at(monkeypatch, batch: int, file: str) -> None:
    """The run is killed when it appends batch ``batch`` (0-based) to the per-image ``file``: the files written
    before it in that batch hold the batch, the others do not (a kill between two appends)."""
    append, calls = RunWriter.append, {}

    def maybe_kill(self, rows):
        if self.per_image.name == file:
            calls[id(self)] = calls.get(id(self), -1) + 1  # one append a batch: the batch's index
            if calls[id(self)] == batch:
                raise Killed
        return append(self, rows)

    monkeypatch.setattr(RunWriter, "append", maybe_kill)


def scores(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame without the cost columns (timings and memory differ from run to run)."""
    return frame[[c for c in frame.columns if not c.startswith(COSTS)]]


def test_a_killed_run_resumed_ends_as_an_uninterrupted_one(tmp_path, monkeypatch, caplog):
    reference = run(config(tmp_path, *STOCHASTIC), tmp_path / "reference")
    roots = f"runner.resume_roots=[{tmp_path / 'runs'}]"
    first = tmp_path / "runs" / "first"
    # the method's rows of batch 1 are written, then the run is killed before the baseline's: uneven files
    # (8 rows and 4), the maps and the checkpoint of batch 0 only
    with monkeypatch.context() as patch:
        kill_at(patch, 1, "per_image_noisecam.csv")
        with pytest.raises(Killed):
            run(config(tmp_path, *STOCHASTIC, roots), first)
    assert (complete_rows(first / "per_image.csv"), complete_rows(first / "per_image_noisecam.csv")) == (8, 4)
    assert len(list((first / "maps").glob("*.npz"))) == 1 and not (first / "run.json").exists()

    with caplog.at_level(logging.INFO, logger="cambench"):
        resumed = run(config(tmp_path, *STOCHASTIC, roots, "runner.resume=true"), tmp_path / "runs" / "second")
    assert f"resumed smoothgradcampp/resnet18 at image 4 of 12 from {first}" in caplog.text
    assert resumed.out_dir == first  # continued in place: the new folder holds nothing of the run
    assert not (tmp_path / "runs" / "second" / STARTED).exists()

    pd.testing.assert_frame_equal(scores(resumed.rows), scores(reference.rows))
    baseline = [pd.read_csv(folder / "per_image_noisecam.csv") for folder in (first, reference.out_dir)]
    pd.testing.assert_frame_equal(scores(baseline[0]), scores(baseline[1]))
    costs = reference.summary["metric"].str.startswith(COSTS)
    pd.testing.assert_frame_equal(resumed.summary[~costs], reference.summary[~costs])
    assert resumed.summary.loc[~costs, "n"].tolist() == [12] * (~costs).sum()
    curves = [pd.read_csv(folder / "curves.csv") for folder in (first, reference.out_dir)]
    pd.testing.assert_frame_equal(*curves)  # the metrics' running state went on from the checkpoint
    maps = [load_maps(folder) for folder in (first, reference.out_dir)]
    assert maps[0].ids == maps[1].ids == reference.rows["id"].tolist()
    assert torch.equal(maps[0].maps, maps[1].maps) and torch.equal(maps[0].targets, maps[1].targets)
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 2  # one row per finished run


def test_a_finished_run_is_skipped_and_another_config_starts_afresh(tmp_path, caplog):
    quick = ["runner.num_images=8", "metrics=deletion_insertion", "runner.baselines=[]", "runner.resume=true"]
    quick.append(f"runner.resume_roots=[{tmp_path / 'runs'}]")
    done = run(config(tmp_path, *quick), tmp_path / "runs" / "a")
    with caplog.at_level(logging.INFO, logger="cambench"):
        again = run(config(tmp_path, *quick, "runner.progress=true", "runner.num_workers=1"), tmp_path / "runs" / "b")
    assert f"gradcam/resnet18 finished before in {tmp_path / 'runs' / 'a'}: skipped" in caplog.text
    assert again.out_dir == done.out_dir and not (tmp_path / "runs" / "b").exists()
    pd.testing.assert_frame_equal(again.rows, done.rows)
    pd.testing.assert_frame_equal(again.summary, pd.read_csv(done.out_dir / "summary.csv"))
    assert again.summary["mean"].tolist() == done.summary["mean"].tolist()
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 1  # the skipped job adds no row

    other = run(config(tmp_path, *quick, "runner.seed=1"), tmp_path / "runs" / "c")
    assert other.out_dir == tmp_path / "runs" / "c" and (other.out_dir / STATE).exists()
    assert other.rows["id"].tolist() != done.rows["id"].tolist()  # another seed: other images
    keys = {json.loads((tmp_path / "runs" / f / STARTED).read_text())["fingerprint"] for f in ("a", "c")}
    assert len(keys) == 2


def test_the_fingerprint_ignores_only_keys_that_change_no_result(tmp_path):
    base = fingerprint(config(tmp_path))
    same = ["runner.resume=true", "runner.progress=true", "runner.num_workers=2", "runner.results_table=x.csv"]
    assert fingerprint(config(tmp_path, *same, "runner.resume_roots=[elsewhere]")) == base
    for changed in ("runner.seed=1", "runner.batch_size=8", "runner.save_maps=true", "method.name=gradcampp"):
        assert fingerprint(config(tmp_path, changed)) != base, changed


def test_draws_are_seeded_per_batch_and_go_on_within_a_batch(tmp_path):
    engine, stream, cpu = SimpleNamespace(seed=3, batch=0), Stream(), torch.device("cpu")
    first = torch.rand(4, generator=stream(engine, cpu))
    assert torch.equal(first, torch.rand(4, generator=torch.Generator().manual_seed(3)))  # batch 0: the run's seed
    assert not torch.equal(torch.rand(4, generator=stream(engine, cpu)), first)  # within a batch the stream goes on
    engine.batch = 2
    late = torch.rand(4, generator=stream(engine, cpu))
    fresh = Stream()(SimpleNamespace(seed=3, batch=2), cpu)  # batch 2 without batches 0 and 1 before it
    assert torch.equal(late, torch.rand(4, generator=fresh))
    seeds = {batch_seed(3, b) % 2**32 for b in range(1000)}  # torch's CPU generator takes the low 32 bits
    assert len(seeds) == 1000


def test_a_resumed_file_keeps_its_first_rows_byte_for_byte(tmp_path):
    path = tmp_path / "per_image.csv"
    path.write_text("id,score\na,0.1\nb,0.20000000000000001\nc,0.3\nd,0.4")  # the kill cut the last row short
    assert complete_rows(path) == 3
    writer = RunWriter(tmp_path, keep=2)
    writer.append([{"id": "e", "score": 0.5}])
    assert path.read_text() == "id,score\na,0.1\nb,0.20000000000000001\ne,0.5\n"
    assert writer.rows_written == 3
