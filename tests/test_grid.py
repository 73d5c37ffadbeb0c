"""The grid pointing game (Böhle et al., B-cos, CVPR 2022): mosaic construction, the confidence filter,
the metric's values, the start-up checks and in-process runs on shapes and on an ImageNet-layout folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from cambench.app.config import ConfigError, validate
from cambench.app.run import preflight, run
from cambench.data.base import DatasetError, Sample
from cambench.data.grid import GridDataset, build_grid, confident, plan_mosaics, score
from cambench.data.registry import DATASETS
from cambench.metrics.grid_pointing_game import grid_pointing_game

CONF = str(Path(__file__).resolve().parent.parent / "conf")
CPU = torch.device("cpu")
FAST = ["runner.batch_size=4", "runner.progress=false", "metrics=grid_pointing_game"]


def config(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return validate(compose("config", overrides=list(overrides)))


class Tiny(Dataset):
    """Images (N, 3, H, W) with labels, no masks."""

    def __init__(self, images: Tensor, labels: list[int]):
        self.images, self._labels = images, labels

    def __len__(self) -> int:
        return len(self._labels)

    def labels(self) -> list[int]:
        return list(self._labels)

    def __getitem__(self, index: int) -> Sample:
        return Sample(self.images[index], self._labels[index], None, f"tiny-{index}")


def coded(predictions: list[int], probabilities: list[float], labels: list[int], size: int = 8) -> Tiny:
    """Images that tell :class:`Stub` what to predict: pixel (0, 0) holds the class, channel 1 its probability."""
    images = torch.rand(len(labels), 3, size, size, generator=torch.Generator().manual_seed(0))
    images[:, 0, 0, 0] = torch.tensor(predictions, dtype=torch.float32)
    images[:, 1, 0, 0] = torch.tensor(probabilities)
    return Tiny(images, labels)


class Stub(torch.nn.Module):
    """Softmax probability p (channel 1, pixel (0, 0)) on the class in channel 0, (1 - p) / (K - 1) on the others."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes, self.seen = classes, 0

    def forward(self, images: Tensor) -> Tensor:
        self.seen += len(images)
        predicted, p = images[:, 0, 0, 0].long(), images[:, 1, 0, 0].double()
        rest = ((1 - p) / (self.classes - 1)).log()[:, None].expand(-1, self.classes).clone()
        return rest.scatter(1, predicted[:, None], p.log()[:, None]).float()


# class 0: both right (0.6, 0.9); class 1: right but unsure, confidently wrong; class 2: both right (0.7, 0.8);
# class 3: right 0.95, wrong; class 4: right 0.55, right but unsure; class 5: both wrong
LABELS = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
PREDICTED = [0, 0, 1, 0, 2, 2, 3, 1, 4, 4, 0, 1]
PROBABILITY = [0.6, 0.9, 0.3, 0.9, 0.7, 0.8, 0.95, 0.9, 0.55, 0.3, 0.9, 0.9]


def test_a_mosaic_tiles_the_resized_images_and_its_cells_partition_it():
    images = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    base = Tiny(images, [0, 1, 2, 3])
    grid = GridDataset(base, 2, {c: [c] for c in range(4)}, seed=0, size=8)
    assert len(grid) == 4 and grid.cell == (4, 4) and len(grid.plan) == 1
    samples = [grid[k] for k in range(4)]
    assert [s.id for s in samples] == ["grid-0000-0", "grid-0000-1", "grid-0000-2", "grid-0000-3"]
    assert sorted(s.label for s in samples) == [0, 1, 2, 3]  # distinct classes, each cell explains its own
    assert all(torch.equal(s.image, samples[0].image) for s in samples) and samples[0].image.shape == (3, 8, 8)
    masks = torch.stack([s.mask for s in samples])
    assert masks.dtype == torch.bool and (masks.sum(0) == 1).all()  # a partition of the image
    for k, sample in enumerate(samples):
        row, col = divmod(k, 2)
        assert sample.mask[row * 4 : row * 4 + 4, col * 4 : col * 4 + 4].all() and sample.mask.sum() == 16
        cell = sample.image[:, sample.mask].view(3, 4, 4)
        expected = F.interpolate(images[sample.label][None], (4, 4), mode="bilinear", antialias=True)[0]
        assert torch.equal(cell, expected)
    # at twice the size the cells are the base images themselves; a size not divisible by n rounds down
    big = GridDataset(base, 2, {c: [c] for c in range(4)}, seed=0, size=16)
    for k in range(4):
        sample = big[k]
        assert torch.equal(sample.image[:, sample.mask].view(3, 8, 8), images[sample.label])
    assert GridDataset(base, 2, {c: [c] for c in range(4)}, seed=0, size=9)[0].image.shape == (3, 8, 8)
    with pytest.raises(IndexError):
        grid[4]


def test_mosaics_are_seeded_distinct_most_confident_first_until_the_classes_run_out():
    candidates = {c: [10 * c + i for i in range(c + 1)] for c in range(6)}  # class c has c + 1 images
    plan = plan_mosaics(candidates, 4, None, seed=0)
    assert plan == plan_mosaics(candidates, 4, None, seed=0) and plan != plan_mosaics(candidates, 4, None, seed=1)
    used = [index for mosaic in plan for _, index in mosaic]
    assert len(used) == len(set(used))
    for mosaic in plan:
        assert len({c for c, _ in mosaic}) == 4 and all(index // 10 == c for c, index in mosaic)
    for c in range(6):  # each class's images in candidate order
        assert [i for i in used if i // 10 == c] == candidates[c][: len([i for i in used if i // 10 == c])]
    left = {c: len(candidates[c]) - sum(i // 10 == c for i in used) for c in range(6)}
    assert sum(n > 0 for n in left.values()) < 4  # stopped: fewer than 4 classes have an image left
    assert plan_mosaics(candidates, 4, 2, seed=0) == plan[:2]
    grid = GridDataset(Tiny(torch.zeros(60, 3, 4, 4), [i // 10 for i in range(60)]), 2, candidates, seed=0)
    assert grid.labels() == [c for mosaic in plan for c, _ in mosaic]


def test_the_confidence_filter_keeps_the_correct_and_confident_images_most_confident_first():
    base, model = coded(PREDICTED, PROBABILITY, LABELS), Stub(6)
    correct, confidence = score(base, range(12), model, CPU, batch_size=5)
    assert correct.tolist() == [p == y for p, y in zip(PREDICTED, LABELS, strict=True)]
    expected = [p if ok else (1 - p) / 5 for p, ok in zip(PROBABILITY, correct.tolist(), strict=True)]
    torch.testing.assert_close(confidence, torch.tensor(expected))
    labels = torch.tensor(LABELS)
    assert confident(torch.arange(12), labels, correct, confidence, 0.5) == {0: [1, 0], 2: [5, 4], 3: [6], 4: [8]}
    at_zero = {0: [1, 0], 1: [2], 2: [5, 4], 3: [6], 4: [8, 9]}  # correct only
    assert confident(torch.arange(12), labels, correct, confidence, 0) == at_zero
    grid, line = build_grid(base, 2, 0.5, model, CPU, num_images=None, seed=0)
    assert sorted(index for _, index in grid.plan[0]) == [1, 5, 6, 8] and len(grid.plan) == 1
    filtered = "(6 of 12 images scored are classified correctly with probability >= 0.5)"
    assert line == f"1 mosaic of 2 x 2 = 4 images, 4 classes, 1 per class {filtered}"
    with pytest.raises(
        DatasetError, match=r"needs 4 classes .* >= 0.8, but 3 classes .* lower dataset\.grid_confidence"
    ):
        build_grid(base, 2, 0.8, model, CPU, num_images=None, seed=0)
    # no filter: every image, the model is not run
    model.seen = 0
    grid, line = build_grid(base, 2, None, model, CPU, num_images=None, seed=0)
    assert model.seen == 0 and line.endswith("(no confidence filter)")
    assert len(grid.plan) == 2  # random draws: the 4 images left after 2 mosaics are of fewer than 4 classes


def test_the_filter_scores_a_seeded_prefix_and_the_mosaics_do_not_depend_on_the_batch_size():
    labels = [i % 8 for i in range(80)]
    base, model = coded(labels, [0.9] * 80, labels), Stub(8)
    plans = []
    for batch_size in (1, 3, 16):
        model.seen = 0
        grid, line = build_grid(base, 2, 0.5, model, CPU, num_images=5, seed=3, batch_size=batch_size)
        assert model.seen == 16  # 2 mosaics (5 cells rounded up) need 8 images: 2 x 8 scored, stratified
        assert len(grid) == 8 and line.startswith("2 mosaics of 2 x 2 = 8 images")
        plans.append(grid.plan)
    assert plans[0] == plans[1] == plans[2]
    model.seen = 0
    grid, _ = build_grid(base, 2, 0.5, model, CPU, num_images=None, seed=3)
    assert model.seen == 80  # null: every image scored, as many mosaics as the random draws of classes allow
    assert 18 <= len(grid.plan) <= 20 and len({index for mosaic in grid.plan for _, index in mosaic}) == len(grid)


def test_grid_pointing_game_on_hand_made_maps():
    cells = torch.zeros(4, 4, 4, dtype=torch.bool)
    for k in range(4):
        row, col = divmod(k, 2)
        cells[k, row * 2 : row * 2 + 2, col * 2 : col * 2 + 2] = True
    blocks = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    torch.testing.assert_close(grid_pointing_game(blocks.expand(4, 4, 4), cells), torch.tensor([0.1, 0.2, 0.3, 0.4]))
    signed = torch.tensor([[-5.0, 1.0], [1.0, 2.0]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    torch.testing.assert_close(grid_pointing_game(signed.expand(4, 4, 4), cells), torch.tensor([0, 0.25, 0.25, 0.5]))
    flat = torch.ones(4, 4, 4)  # chance: 1 / n^2
    torch.testing.assert_close(grid_pointing_game(flat, cells), torch.full((4,), 0.25))
    nothing = torch.stack([torch.zeros(4, 4), -torch.ones(4, 4)])
    assert grid_pointing_game(nothing, cells[:2]).isnan().all()
    assert grid_pointing_game(blocks.expand(4, 4, 4), cells).dtype == torch.float32


def test_the_grid_options_are_on_every_dataset_and_checked_at_start(tmp_path):
    for name, spec in DATASETS.items():
        root = [] if name == "shapes" else [f"dataset.root={tmp_path}"]
        cfg = config(f"dataset={name}", *root, "dataset.grid=2")
        assert (cfg.dataset.grid, cfg.dataset.grid_confidence) == (2, 0.5)
        assert spec.capabilities(cfg.dataset) == {"grid"}
        assert config(f"dataset={name}", *root).dataset.grid is None
    assert preflight(config("metrics=grid_pointing_game", "dataset.grid=2")) == ["layer4"]
    with pytest.raises(ConfigError, match=r"metric grid_pointing_game needs grid mosaics \(dataset.grid=2"):
        preflight(config("metrics=grid_pointing_game"))
    with pytest.raises(ConfigError, match="metric localisation needs ground-truth masks"):  # cells are not objects
        preflight(config("metrics=localisation", "dataset.grid=2"))
    with pytest.raises(
        DatasetError, match=r"dataset\.grid=3 needs 9 distinct classes a mosaic but dataset=shapes has 8"
    ):
        preflight(config("dataset.grid=3"))
    with pytest.raises(DatasetError, match=r"dataset\.grid must be null .* or >= 2"):
        preflight(config("dataset.grid=1"))
    with pytest.raises(DatasetError, match=r"dataset.grid_confidence must be in \[0, 1\]"):
        preflight(config("dataset.grid=2", "dataset.grid_confidence=1.5"))


def test_grid_run_on_shapes_with_the_shipped_resnet18(tmp_path, caplog):
    # 128 px: at 64 px the shipped resnet18 (trained at 224) gets only 3 of the 8 classes right, too few for 2 x 2
    table = tmp_path / "runs.csv"
    grid = ["dataset.image_size=128", "dataset.grid=2", "runner.num_images=8"]
    cfg = config(*grid, f"runner.results_table={table}", *FAST)
    with caplog.at_level(logging.INFO):
        result = run(cfg, tmp_path / "run")
    assert "runner.target=label, not prediction" in caplog.text and "grid confidence filter" in caplog.text
    rows = result.rows
    assert rows["id"].tolist() == [f"grid-{m:04d}-{k}" for m in range(2) for k in range(4)]
    assert (rows["target"] == rows["label"]).all()
    assert all(rows["label"].iloc[m * 4 : m * 4 + 4].nunique() == 4 for m in range(2))
    scores = rows["grid_pointing_game"]
    assert scores[~rows["constant_map"]].between(0, 1).all() and scores[~rows["constant_map"]].notna().all()
    fake = pd.read_csv(tmp_path / "run" / "per_image_fakecam.csv")  # Fake-CAM scores chance, 1/4
    assert fake["grid_pointing_game"].sub(0.25).abs().max() < 1e-4
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["config"]["runner"]["target"] == "label" and info["timings"]["images"].startswith("2 mosaics of 2 x 2")
    assert pd.read_csv(table)["target"].tolist() == ["label"]
    assert "grid_pointing_game" in result.summary["metric"].tolist()


def test_grid_run_on_an_imagenet_folder_with_random_weights(tmp_path):
    wnids = ["n01440764", "n01443537", "n01484850", "n01491361"]
    for i, wnid in enumerate(wnids):
        (tmp_path / "val" / wnid).mkdir(parents=True)
        Image.new("RGB", (32, 32), (60 * i, 255 - 60 * i, 128)).save(tmp_path / "val" / wnid / f"img{i}.png")
    index_file = tmp_path / "index.json"
    index_file.write_text(json.dumps({w: 10 * i for i, w in enumerate(wnids)}))
    dataset = ["dataset=imagenet", f"dataset.root={tmp_path / 'val'}", f"dataset.class_index_file={index_file}"]
    common = [*dataset, "model.weights=random", "dataset.grid=2", "runner.baselines=[]", *FAST]
    common.append(f"runner.results_table={tmp_path / 'runs.csv'}")
    result = run(config(*common, "dataset.grid_confidence=null"), tmp_path / "run")
    assert sorted(result.rows["label"]) == [0, 10, 20, 30] and len(result.rows) == 4
    assert (result.rows["target"] == result.rows["label"]).all()
    values = result.rows.loc[~result.rows["constant_map"], "grid_pointing_game"]
    assert values.between(0, 1).all() and result.rows["id"].tolist() == [f"grid-0000-{k}" for k in range(4)]
    # random weights classify nothing correctly: the filter (even at 0: correct only) leaves no mosaic
    with pytest.raises(DatasetError, match=r"needs 4 classes .* but 0 classes have one among the 4 images scored"):
        run(config(*common, "dataset.grid_confidence=0"), tmp_path / "run0")
