"""Hydra callback of the parallel launcher (``conf/hydra/launcher/parallel.yaml``): a GPU per worker.

Joblib runs the jobs of a sweep in ``n_jobs`` worker processes, each taking the next job when it is
free. At its first job, each worker claims a GPU of its own: the first one whose lock file under
``hydra.sweep.dir/.gpus/`` no other worker holds (the lock lives as long as the worker, so the OS
releases it when the worker ends). The claimed GPU becomes the worker's current CUDA device, which
``runner.device=auto`` (or ``cuda``) uses. With ``n_jobs`` at most the GPU count no two jobs share a
GPU, whatever their run times (job number modulo the GPU count would put a slow job and the next
one on one GPU); beyond it, a worker without a free GPU takes job number modulo the GPU count.
``runner.device=cuda:N`` still picks GPU N; with one GPU or none the callback does nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)
_claimed: list[FileLock] = []  # this process's GPU lock, held until it ends


def claim_gpu(folder: Path, count: int) -> int | None:
    """The GPU this process holds the lock of, claiming the first free one; None if all are taken."""
    if not _claimed:
        folder.mkdir(parents=True, exist_ok=True)
        for gpu in range(count):
            lock = FileLock(folder / f"{gpu}.lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            _claimed.append(lock)
            break
        else:
            return None
    return int(Path(_claimed[0].lock_file).stem)


class GPUPerWorker(Callback):
    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        count = torch.cuda.device_count()
        if count < 2:
            return
        num = config.hydra.job.num
        gpu = claim_gpu(Path(config.hydra.sweep.dir) / ".gpus", count)
        if gpu is None:
            gpu = num % count
            log.warning("more parallel jobs than GPUs (%d): job %d shares GPU %d", count, num, gpu)
        torch.cuda.set_device(gpu)
        log.info("job %d on GPU %d of %d", num, gpu, count)
