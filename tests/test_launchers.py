"""Sweeps through Hydra's launcher plugins: submitit (its local executor runs SLURM's code path without a
cluster) and joblib (parallel jobs on one machine), each a real ``python -m cambench -m`` subprocess."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from cambench.app import launch
from cambench.app.launch import GPUPerWorker

pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[cluster]'")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]'")

TINY = ["model=mobilenet_v3_small", "dataset.image_size=64", "runner.num_images=2", "runner.batch_size=2"]
TINY += ["metrics=deletion_insertion", "metrics.deletion_insertion.steps=2", "runner.baselines=[]"]
TINY += ["runner.bootstrap=10", "runner.progress=false", "runner.add_when_available=[]"]


def sweep(tmp_path: Path, *launcher: str) -> subprocess.CompletedProcess:
    """A 2-job sweep (gradcam, fakecam) through ``launcher``; ``.output`` holds stdout and stderr."""
    args = ["-m", "method=gradcam,fakecam", *launcher, *TINY]
    args += [f"hydra.sweep.dir={tmp_path / 'sweep'}", f"runner.results_table={tmp_path / 'runs.csv'}"]
    result = subprocess.run([sys.executable, "-m", "cambench", *args], capture_output=True, text=True, timeout=180)
    result.output = result.stdout + result.stderr
    return result


def check_both_jobs_finished(tmp_path: Path) -> None:
    """Each job's folder (hydra.sweep.subdir) has its run.json and rows, on the same images; one table row each."""
    for num, method in enumerate(["gradcam", "fakecam"]):
        folder = tmp_path / "sweep" / f"{num}_{method}_mobilenet_v3_small"
        info = json.loads((folder / "run.json").read_text())
        assert info["config"]["method"]["name"] == method
        rows = pd.read_csv(folder / "per_image.csv")
        assert len(rows) == 2 and rows["deletion"].between(0, 1).all()
    table = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(table["method"]) == ["fakecam", "gradcam"]


def test_submitit_local_runs_the_slurm_code_path(tmp_path):
    result = sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5")
    assert result.returncode == 0, result.output
    check_both_jobs_finished(tmp_path)
    logs = list((tmp_path / "sweep" / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2  # one submitit job per sweep job, with its own log


def test_joblib_runs_two_jobs_in_parallel_processes(tmp_path):
    result = sweep(tmp_path, "hydra/launcher=parallel", "hydra.launcher.n_jobs=2")
    assert result.returncode == 0, result.output
    assert "Joblib.Parallel(n_jobs=2" in result.output
    check_both_jobs_finished(tmp_path)


def test_the_slurm_config_asks_one_gpu_per_job():
    with initialize_config_module("cambench.conf", version_base="1.3"):
        cfg = compose(
            "config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True
        )
    launcher = OmegaConf.to_container(cfg.hydra.launcher)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["partition"], launcher["gpus_per_node"], launcher["tasks_per_node"]) == ("gpu", 1, 1)
    assert launcher["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"


def test_each_parallel_worker_claims_a_gpu_of_its_own(tmp_path, monkeypatch):
    chosen = []
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    monkeypatch.setattr("torch.cuda.set_device", chosen.append)
    held = []  # each simulated worker's claimed lock stays held, as in a live worker process
    for worker in range(3):  # three workers on two GPUs; a worker starts with no claim
        monkeypatch.setattr(launch, "_claimed", [])
        for num in (worker, worker + 4):  # a worker keeps its GPU for its next job
            GPUPerWorker().on_job_start(
                OmegaConf.create({"hydra": {"job": {"num": num}, "sweep": {"dir": str(tmp_path)}}})
            )
        held.append(launch._claimed)
    # workers 0 and 1 claim GPUs 0 and 1; worker 2 finds none free: job number modulo the count (2 -> 0, 6 -> 0)
    assert chosen == [0, 0, 1, 1, 0, 0]
    assert sorted(p.name for p in (tmp_path / ".gpus").iterdir()) == ["0.lock", "1.lock"]
    assert [len(claims) for claims in held] == [1, 1, 0]


@pytest.mark.parametrize("gpus", [0, 1])
def test_with_one_gpu_or_none_the_callback_does_nothing(tmp_path, monkeypatch, gpus):
    chosen = []
    monkeypatch.setattr("torch.cuda.device_count", lambda: gpus)
    monkeypatch.setattr("torch.cuda.set_device", chosen.append)
    GPUPerWorker().on_job_start(OmegaConf.create({"hydra": {"job": {"num": 3}, "sweep": {"dir": str(tmp_path)}}}))
    assert chosen == [] and not (tmp_path / ".gpus").exists()
