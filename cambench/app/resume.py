"""Resumable runs (``runner.resume``): a run's fingerprint, the earlier run of the same config, and
the checkpoint a killed run goes on from.

Every run first writes ``started.json`` into its folder: the fingerprint of its resolved config (a
hash of all of it but the keys in ``IGNORED``: the bookkeeping keys of :mod:`cambench.effects`, which
change no value in any file a run writes) and the time it started. After every batch it rewrites
``state.pt``: the batches (and images) that the method and every sanity baseline have written, the
seconds spent and the metrics' running state (the mean curves). With ``runner.resume=true`` the runner looks for the
folders with the same fingerprint under ``runner.resume_roots`` (Hydra's ``outputs/`` and
``multirun/`` trees, relative to the working folder). The newest finished one (it holds
``run.json``) answers the job, which is skipped. Else the newest unfinished one is continued in
place: its per-image files and saved maps are cut back to the batches of its checkpoint (a kill
between two files' appends leaves them uneven; the checkpoint is written once all of them hold
the batch) and the run goes on from the next batch in that folder, so a run's results stay in
one folder however often it is resumed (the new Hydra folder keeps only the log).
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cambench.effects import BOOKKEEPING, keys
from cambench.io.checkpoint import STATE
from cambench.io.writer import RUN_INFO

log = logging.getLogger(__name__)

STARTED = "started.json"
# the keys (dotted) that change no value in any file a run writes: how it is resumed and shown, the loader's
# worker processes, the shared table
IGNORED = keys(BOOKKEEPING)


def fingerprint(cfg: DictConfig) -> str:
    """A hash of the resolved config without the ``IGNORED`` keys: equal for runs that write the same files."""
    config = OmegaConf.to_container(cfg, resolve=True)
    for key in IGNORED:
        *path, name = key.split(".")
        node = config
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(name, None)
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def mark_started(folder: Path, key: str) -> None:
    """Make ``folder`` a fresh run of fingerprint ``key``: an earlier run's record of having finished or of
    its progress there goes (the per-image files and the maps are restarted by their writers)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in (RUN_INFO, STATE):
        (folder / name).unlink(missing_ok=True)
    started = {"fingerprint": key, "started": datetime.now(UTC).isoformat(timespec="microseconds")}
    (folder / STARTED).write_text(json.dumps(started) + "\n")


def find_earlier(key: str, roots: list[str]) -> tuple[Path, bool] | None:
    """The newest folder under ``roots`` that finished a run of fingerprint ``key``, else the newest that
    started one, and whether it finished; None when there is neither."""
    found = []
    for root in roots:
        for started in Path(root).rglob(STARTED):
            try:
                info = json.loads(started.read_text())
            except (OSError, ValueError):
                continue
            if info.get("fingerprint") == key:
                found.append(((started.parent / RUN_INFO).exists(), info.get("started", ""), started.parent))
    if not found:
        return None
    finished, _, folder = max(found)
    return folder, finished
