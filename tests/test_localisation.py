"""Ground-truth localisation: exact values on hand-made maps and masks (ties, tolerance, empty maps
and masks), AUROC against sklearn, agreement with Quantus's PointingGame, RelevanceMassAccuracy and
RelevanceRankAccuracy, the renderer's distractor masks, the start-up check, and a run end to end."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from sklearn.metrics import roc_auc_score

from cambench.app.config import ConfigError, validate
from cambench.app.run import preflight
from cambench.data.base import collate
from cambench.data.shapes import MAX_DISTRACTORS, render, render_layers, sample_scenes
from cambench.data.shapes_dataset import ShapesDataset
from cambench.metrics.localisation import (
    NAMES,
    auroc,
    dilate,
    distractor_mass,
    energy_pointing_game,
    iou,
    localisation,
    pointing_game,
    relevance_mass,
    relevance_rank,
)

CONF = str(Path(__file__).resolve().parent.parent / "conf")
NAN = math.nan


def config(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return validate(compose("config", overrides=list(overrides)))


def centre_mask(size: int = 4) -> torch.Tensor:
    """(1, size, size) bool: the central 2 x 2 block."""
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    mask[0, size // 2 - 1 : size // 2 + 1, size // 2 - 1 : size // 2 + 1] = True
    return mask


# a map with its maximum in the centre block, a tie at 0.5 across the block's edge and mass outside
MAP = torch.tensor([[[0.5, 0, 0, 0], [0, 1.0, 0.5, 0], [0, 0.25, 0.25, 0], [0, 0, 0, 0]]])


def test_every_column_exact_on_a_hand_made_map():
    values = localisation(MAP, centre_mask(), tolerance=0, threshold=0.5)
    assert set(values) == set(NAMES)
    assert values["pointing_game"].item() == 1.0
    assert values["energy_pointing_game"].item() == pytest.approx(2.0 / 2.5)
    assert values["relevance_mass"].item() == pytest.approx(2.0 / 2.5)
    assert values["iou"].item() == pytest.approx(2 / 5)  # {1, 0.5, 0.5} vs the 4 block pixels: 2 shared of 5
    # pairs (block pixel, other pixel) ordered right: 1 beats all 12, 0.5 beats 11 and ties 1, each 0.25 beats 11
    assert values["auroc"].item() == pytest.approx((12 + 11.5 + 2 * 11) / 48)
    # top 4: 1, 0.5, 0.5 (2 in the block), then one of the two 0.25s, both in the block
    assert values["relevance_rank"].item() == pytest.approx(3 / 4)
    assert iou(MAP, centre_mask(), threshold=0.25).item() == pytest.approx(4 / 5)
    assert iou(MAP, centre_mask(), threshold=1.0).item() == pytest.approx(1 / 4)


def test_tied_maxima_count_the_share_that_hits():
    two = torch.zeros(1, 4, 4)
    two[0, 1, 1] = two[0, 0, 3] = 1.0  # one maximum in the block, one outside
    assert pointing_game(two, centre_mask(), 0).item() == 0.5  # Quantus's any-maximal-pixel rule: a hit
    # a constant map points nowhere: the chance rate, as for a random map
    assert pointing_game(torch.full((1, 4, 4), 0.3), centre_mask(), 0).item() == pytest.approx(4 / 16)
    # Fake-CAM (1 but at one pixel) scores the chance rate, not a hit on every image
    fake = torch.ones(1, 4, 4)
    fake[0, 3, 3] = 0
    assert pointing_game(fake, centre_mask(), 0).item() == pytest.approx(4 / 15)


def test_rank_accuracy_shares_the_slots_left_among_pixels_tied_at_the_kth_value():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 0, :2] = True  # k = 2
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0], maps[0, 0, 1], maps[0, 3, 3] = 1.0, 0.5, 0.5  # 1 in; one slot for two tied pixels, one in
    assert relevance_rank(maps, mask).item() == pytest.approx(1.5 / 2)
    maps[0, 3, 3] = 0.4  # no tie: both top pixels in
    assert relevance_rank(maps, mask).item() == 1.0


def test_tolerance_grows_the_mask_by_a_euclidean_disk():
    maps = torch.zeros(2, 6, 6)
    maps[:, 0, 0] = 1.0
    masks = torch.zeros(2, 6, 6, dtype=torch.bool)
    masks[0, 0, 2] = True  # 2 px right of the maximum
    masks[1, 2, 2] = True  # 2 px right and 2 down: sqrt(8) = 2.83 px away
    hits = {t: pointing_game(maps, masks, tolerance=t).tolist() for t in range(4)}
    assert hits == {0: [0.0, 0.0], 1: [0.0, 0.0], 2: [1.0, 0.0], 3: [1.0, 1.0]}  # a square would hit at 2
    grown = dilate(masks[1:], 2)[0]
    assert grown.sum() == 13 and grown[2, 0] and grown[0, 2] and not grown[0, 0]  # the disk of radius 2
    assert torch.equal(dilate(masks, 0), masks)


def test_dilation_equals_a_convolution_with_the_disk():
    masks = torch.rand(3, 17, 23, generator=torch.Generator().manual_seed(1)) < 0.03
    for radius in (1, 2, 3, 5, 15):
        offsets = torch.arange(-radius, radius + 1)
        disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).float()
        expected = F.conv2d(masks[:, None].float(), disk[None, None], padding=radius)[:, 0] > 0.5
        assert torch.equal(dilate(masks, radius), expected)


def test_all_zero_maps_and_empty_masks():
    zero = torch.zeros(1, 4, 4)
    values = localisation(zero, centre_mask(), tolerance=0, threshold=0.5)
    for name in ("energy_pointing_game", "relevance_mass"):
        assert math.isnan(values[name].item())  # 0 / 0
    assert values["pointing_game"].item() == pytest.approx(4 / 16)  # every pixel ties: the chance rate
    assert values["relevance_rank"].item() == pytest.approx(4 / 16)
    assert values["auroc"].item() == 0.5
    assert values["iou"].item() == 0.0
    empty = localisation(MAP, torch.zeros(1, 4, 4, dtype=torch.bool), tolerance=0, threshold=0.5)
    assert all(math.isnan(v.item()) for v in empty.values())  # nothing to localise
    assert math.isnan(auroc(MAP, torch.ones(1, 4, 4, dtype=torch.bool)).item())  # no negative pixel
    assert math.isnan(distractor_mass(zero, centre_mask()).item())


def test_energy_and_relevance_mass_differ_only_for_signed_maps():
    signed = MAP.clone()
    signed[0, 3, 3] = -0.5  # negative relevance outside: lowers the energy's total, not the positive mass
    assert energy_pointing_game(signed, centre_mask()).item() == pytest.approx(2.0 / 2.0)
    assert relevance_mass(signed, centre_mask()).item() == pytest.approx(2.0 / 2.5)


def test_distractor_mass_exact():
    distractors = torch.zeros(1, 4, 4, dtype=torch.bool)
    distractors[0, 0, 0] = True
    assert distractor_mass(MAP, distractors).item() == pytest.approx(0.5 / 2.5)


def random_maps(n: int = 64, size: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random maps in [0, 1] and masks that overlap them more than chance (a blob plus noise)."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(n, size, size, generator=g)
    masks = torch.rand(n, size, size, generator=g) < 0.2
    blob = torch.zeros(n, size, size, dtype=torch.bool)
    blob[:, 5:12, 6:14] = True
    masks |= blob & (torch.rand(n, 1, 1, generator=g) < 0.5)
    maps = torch.where(masks, maps ** torch.rand(n, 1, 1, generator=g), maps)  # raised on the mask, by chance
    return maps, masks


def test_auroc_matches_sklearn_with_and_without_ties():
    maps, masks = random_maps()
    coarse = (maps * 4).round() / 4  # five levels: many ties
    for m in (maps, coarse):
        expected = [roc_auc_score(k.flatten().numpy(), v.flatten().numpy()) for v, k in zip(m, masks, strict=True)]
        torch.testing.assert_close(auroc(m, masks), torch.tensor(expected, dtype=torch.float32))


@pytest.fixture(scope="module")
def quantus():
    np.trapz = np.trapezoid  # Quantus 0.6 calls np.trapz, removed in numpy 2.4 (tests only)
    import quantus

    return quantus


def quantus_scores(metric, maps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    n, h, w = maps.shape
    x = np.zeros((n, 3, h, w), np.float32)
    a, s = maps[:, None].numpy(), masks[:, None].numpy().astype(np.float32)
    return np.asarray(metric(model=None, x_batch=x, y_batch=np.zeros(n, int), a_batch=a, s_batch=s), dtype=float)


def test_agrees_with_quantus_on_random_maps(quantus):
    maps, masks = random_maps()
    options = {"normalise": False, "abs": False, "disable_warnings": True, "display_progressbar": False}
    pairs = [
        (quantus.PointingGame, lambda maps, masks: pointing_game(maps, masks, 0)),
        (quantus.RelevanceMassAccuracy, relevance_mass),
        (quantus.RelevanceRankAccuracy, relevance_rank),
    ]
    for cls, ours in pairs:
        expected = quantus_scores(cls(**options), maps, masks)
        np.testing.assert_allclose(ours(maps, masks).numpy(), expected, rtol=1e-6, atol=1e-6)
    hits = pointing_game(maps, masks, 0)
    assert 0 < hits.mean() < 1  # both outcomes occur
    # Deliberate difference: with tied maxima Quantus scores a hit if any maximal pixel is in the mask,
    # we the share of them that is (the expected hit of a random pick), so Fake-CAM-like maps score chance
    fake = torch.ones_like(maps)
    fake[:, -1, -1] = 0
    theirs = quantus_scores(quantus.PointingGame(**options), fake, masks)
    assert (theirs == 1).all()
    expected = (masks.flatten(1)[:, :-1].sum(1) / (masks[0].numel() - 1)).float()
    torch.testing.assert_close(pointing_game(fake, masks, 0), expected)


def test_the_renderer_gives_the_distractors_disjoint_from_the_object():
    scenes = sample_scenes(16, torch.Generator().manual_seed(3))
    image, mask, distractors = render_layers(scenes, 64)
    assert all(torch.equal(a, b) for a, b in zip(render(scenes, 64), (image, mask), strict=True))
    assert distractors.dtype == torch.bool and not (distractors & mask).any()
    assert distractors.flatten(1).any(1).all()  # every scene has at least one visible distractor here
    # a distractor pixel shows the colour of one of the scene's distractors that are on
    colours = scenes.distractor_colour[:, :, :, None, None]  # (B, D, 3, 1, 1)
    on = scenes.distractor_on[:, :, None, None]
    painted = ((image[:, None] == colours).all(2) & on).any(1)
    assert painted[distractors].all()
    assert scenes.distractor_on.sum(1).max() <= MAX_DISTRACTORS
    samples = [ShapesDataset("test", 2, 32)[i] for i in range(2)]
    batch = collate(samples)
    assert batch.distractors.shape == (2, 32, 32) and not (batch.distractors & batch.masks).any()
    assert batch.to("cpu").distractors is not None


def test_distractor_mass_needs_shapes(tmp_path):
    assert preflight(config("metrics=groundtruth")) == ["layer4"]
    imagenet = ["dataset=imagenet", f"dataset.root={tmp_path}", f"dataset.boxes_dir={tmp_path}", "model.weights=random"]
    assert preflight(config("metrics=localisation", *imagenet)) == ["layer4"]
    with pytest.raises(ConfigError, match=r"metric distractor_mass needs distractor masks \(dataset=shapes\)"):
        preflight(config("metrics=groundtruth", *imagenet))
    with pytest.raises(ConfigError, match="tolerance >= 0"):
        config("metrics=localisation", "metrics.localisation.tolerance=-1")


def test_groundtruth_metrics_in_one_run(tmp_path):
    from cambench.app.run import run

    overrides = ["metrics=groundtruth", "metrics.localisation.tolerance=3", "model.weights=random"]
    overrides += ["dataset.image_size=64", "runner.num_images=4", "runner.batch_size=2", "runner.progress=false"]
    overrides += ["metrics.sensitivity.samples=2", "runner.baselines=[fakecam,edgecam]"]
    cfg = config(*overrides, f"runner.results_table={tmp_path / 'runs.csv'}")
    assert list(cfg.metrics) == [
        "localisation",
        "distractor_mass",
        "model_randomisation",
        "class_sensitivity",
        "sensitivity",
        "map_complexity",
    ]
    result = run(cfg, tmp_path / "run")
    # Edge-CAM ignores the model and the class: both sanity checks flag it
    flags = result.summary.set_index("metric")["flag"].fillna("")
    assert "edgecam fails (1.000 >= 0.9)" in flags["randomisation_spearman"]
    assert "edgecam fails (1.000 >= 0.9)" in flags["class_similarity"]
    columns = [*NAMES, "distractor_mass"]
    for rows in (result.rows, pd.read_csv(tmp_path / "run" / "per_image_fakecam.csv")):
        assert len(rows) == 4 and set(columns) <= set(rows.columns)
        constant = rows["constant_map"]
        scores = rows.loc[~constant, columns]
        assert scores.notna().all().all() and scores.apply(lambda c: c.between(0, 1)).all().all()
    assert set(columns) <= set(result.summary["metric"])
