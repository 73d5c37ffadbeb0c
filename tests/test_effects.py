"""One declaration of what each config key does to the results (cambench.effects), read by the resume
fingerprint and the leaderboard alike: every runner key, and the choice of metrics, changed one at a time,
moves the fingerprint unless it is bookkeeping, and makes a protocol variant of the leaderboard only where it
changes scores, for runs launched by Hydra (their overrides) and runs that record none (their configs)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cambench.analysis.leaderboard import CELL, NOT_VARIANTS, select
from cambench.analysis.runs import FinishedRun
from cambench.app.config import validate
from cambench.app.resume import IGNORED, fingerprint
from cambench.effects import BOOKKEEPING, EFFECT, LEVELS, SCORES, SELECTION, RunnerConfig, effect, keys

CONF = str(Path(__file__).resolve().parent.parent / "conf")
# another valid value of every runner key (its default is the YAML's); a key added to RunnerConfig needs one
OTHER_VALUES = {
    "batch_size": "8",
    "num_images": "32",
    "device": "cpu",
    "autocast": "bf16",
    "channels_last": "false",
    "target": "label",
    "seed": "1",
    "score_batch_size": "8",
    "num_workers": "2",
    "bootstrap": "10",
    "results_table": "elsewhere.csv",
    "baselines": "[]",
    "add_when_available": "[]",
    "progress": "false",
    "save_grid": "true",
    "save_maps": "true",
    "resume": "true",
    "resume_roots": "[elsewhere]",
}
CHANGES = [(f"runner.{key}", f"runner.{key}={value}") for key, value in OTHER_VALUES.items()]
CHANGES += [("metrics", "metrics=[deletion_insertion,adcc,map_complexity]")]  # one more metric, no parameter


def config(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return validate(compose("config", overrides=list(overrides)))


def finished(folder: Path, cfg, overrides: list[str] | None, when: str) -> FinishedRun:
    """A finished run's record as the leaderboard reads it: its resolved config, finish time and (when Hydra
    launched it) its overrides."""
    if overrides is not None:
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))  # YAML's flow style
    return FinishedRun(folder, {"config": OmegaConf.to_container(cfg, resolve=True), "finished": when})


def test_every_runner_key_declares_its_effect():
    declared = {f.name: f.metadata.get(EFFECT) for f in dataclasses.fields(RunnerConfig)}
    assert set(declared.values()) <= set(LEVELS), declared
    assert declared.keys() == OTHER_VALUES.keys()
    bookkeeping = {"progress", "num_workers", "results_table", "resume", "resume_roots"}
    assert keys(BOOKKEEPING) == {f"runner.{name}" for name in bookkeeping}
    assert effect("metrics") == SELECTION and effect("runner.batch_size") == SELECTION
    assert effect("method.samples") == effect("runner.channels_last") == effect("runner.no_longer_declared") == SCORES
    # the two readers: the fingerprint leaves out the bookkeeping keys, the leaderboard all that change no score
    assert keys(BOOKKEEPING) == IGNORED
    assert keys(BOOKKEEPING, SELECTION) | CELL == NOT_VARIANTS


@pytest.mark.parametrize(("key", "override"), CHANGES, ids=[key for key, _ in CHANGES])
def test_a_key_moves_the_fingerprint_and_makes_a_variant_as_its_effect_says(key, override, tmp_path):
    common = ["method=gradcam"]
    base, changed = config(*common), config(*common, override)
    assert OmegaConf.select(base, key) != OmegaConf.select(changed, key), "the override must change the value"
    level = effect(key)
    assert (fingerprint(changed) == fingerprint(base)) == (level == BOOKKEEPING), level

    for hydra in (True, False):  # told apart by the overrides, or (none recorded) by the configs
        folder = tmp_path / ("hydra" if hydra else "plain")
        runs = [
            finished(folder / "a", base, common if hydra else None, "2026-01-01T00:00:00"),
            finished(folder / "b", changed, [*common, override] if hydra else None, "2026-01-02T00:00:00"),
        ]
        entries, notes = select(runs)
        if level == SCORES:
            assert len(entries) == 2 and not notes, (hydra, [e.variant for e in entries])
            assert all(e.variant for e in entries) and len({e.variant for e in entries}) == 2
        else:  # one cell: the newer run is kept and a note says so
            assert [e.run.folder.name for e in entries] == ["b"] and len(notes) == 1, (hydra, entries)
