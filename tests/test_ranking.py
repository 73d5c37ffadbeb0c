"""Ranking reliability on hand-made scores: exact ranks, bootstrap stability against a loop over the
same resamples, Kendall's tau against scipy, pairing by image id and the tau between variants."""

import json

import pandas as pd
import pytest
import torch
from scipy.stats import kendalltau

from cambench.analysis import ranking
from cambench.analysis.leaderboard import Entry
from cambench.analysis.ranking import agreement, rank, ranks, resampled_means, stability
from cambench.analysis.runs import load_finished


def test_ranks_by_direction_ties_share_the_better_rank_and_nan_is_last():
    means = torch.tensor([0.3, 0.1, 0.3, 0.2, float("nan")])
    assert ranks(means, lower=False).tolist() == [1, 4, 1, 3, 5]
    assert ranks(means, lower=True).tolist() == [3, 1, 3, 2, 5]
    assert ranks(means.expand(2, 5), lower=True).tolist() == [[3, 1, 3, 2, 5]] * 2  # batched over resamples


def test_clearly_separated_methods_keep_their_ranks_in_every_resample():
    noise = 0.01 * torch.rand(3, 40)
    scores = torch.tensor([[0.2], [0.5], [0.8]]) + noise
    result = stability(scores, lower=True, resamples=300)
    assert result.ranks.tolist() == [1, 2, 3]
    assert result.keeps.tolist() == [1.0, 1.0, 1.0] and result.unchanged == 1.0
    assert stability(scores, lower=False, resamples=300).ranks.tolist() == [3, 2, 1]


def test_identical_methods_tie_in_every_resample():
    same = torch.rand(30)
    scores = torch.stack([same, same, same + 1])
    result = stability(scores, lower=False, resamples=200)
    assert result.ranks.tolist() == [2, 2, 1]
    assert result.keeps.tolist() == [1.0, 1.0, 1.0] and result.unchanged == 1.0


def test_stability_of_close_methods_equals_a_loop_over_the_same_resamples():
    generator = torch.Generator().manual_seed(3)
    scores = torch.rand(3, 25, generator=generator, dtype=torch.float64)
    scores[1] += 0.03
    scores[0, 4] = float("nan")  # skipped in the means
    result = stability(scores, lower=False, resamples=500, seed=7)
    index = torch.randint(25, (500, 25), generator=torch.Generator().manual_seed(7))
    full = [sorted(scores.nanmean(1).tolist(), reverse=True).index(m) + 1 for m in scores.nanmean(1).tolist()]
    keeps, unchanged = [0, 0, 0], 0
    for rows in index:
        means = [scores[i, rows].nanmean().item() for i in range(3)]
        ranked = [sorted(means, reverse=True).index(m) + 1 for m in means]
        keeps = [k + (r == f) for k, r, f in zip(keeps, ranked, full, strict=True)]
        unchanged += ranked == full
    assert result.ranks.tolist() == full
    assert result.keeps.tolist() == pytest.approx([k / 500 for k in keeps])
    assert result.unchanged == pytest.approx(unchanged / 500)
    assert 0 < result.unchanged < 1  # close methods: the ranking does change


def test_resampled_means_in_chunks_equal_one_gather(monkeypatch):
    scores = torch.rand(4, 50, dtype=torch.float64)
    index = torch.randint(50, (64, 50))
    whole = scores[:, index].mean(-1)
    monkeypatch.setattr(ranking, "CHUNK", 4 * 50 * 5)  # 5 resamples a chunk
    assert torch.equal(resampled_means(scores, index), whole)


def test_kendall_tau_between_metrics_by_direction_and_against_scipy():
    means = pd.DataFrame(
        {"deletion": [0.1, 0.2, 0.3, 0.4], "insertion": [0.9, 0.8, 0.7, 0.6], "auroc": [0.1, 0.2, 0.3, 0.4]},
        index=["a", "b", "c", "d"],
    )
    tau = agreement(means, lower={"deletion"})
    assert tau.loc["deletion", "insertion"] == pytest.approx(1.0)  # lowest deletion, highest insertion: agree
    assert tau.loc["deletion", "auroc"] == pytest.approx(-1.0)  # the reversed ranking
    assert tau.loc["auroc", "auroc"] == pytest.approx(1.0)
    generator = torch.Generator().manual_seed(0)
    random = pd.DataFrame((torch.randint(0, 4, (9, 3), generator=generator)).numpy(), columns=["x", "y", "z"])
    tau = agreement(random.astype(float), lower={"y"})
    for a, b in (("x", "y"), ("x", "z"), ("y", "z")):  # tau-b with ties, as scipy
        sign = -1 if "y" in (a, b) else 1
        assert tau.loc[a, b] == pytest.approx(sign * kendalltau(random[a], random[b]).statistic)


def write_run(folder, method, ids, deletion, insertion):
    folder.mkdir(parents=True)
    config = {"method": {"name": method}, "model": {"name": "resnet18"}, "dataset": {"name": "shapes"}}
    config |= {"metrics": {"deletion_insertion": {}}, "runner": {"baselines": []}}
    (folder / "run.json").write_text(json.dumps({"config": config, "finished": "2026-01-01T00:00:00+00:00"}))
    rows = pd.DataFrame({"id": ids, "deletion": deletion, "insertion": insertion})
    rows.to_csv(folder / "per_image.csv", index=False)
    return load_finished(folder)


def entry(run, variant=""):
    return Entry(run.model, run.dataset, variant, run.method, run)


def test_groups_pair_images_by_id_drop_the_unshared_and_rank_variants(tmp_path):
    ids = [f"img{i}" for i in range(6)]
    a = write_run(tmp_path / "a", "gradcam", ids, [0.1] * 6, [0.9] * 6)
    b = write_run(tmp_path / "b", "scorecam", ids[::-1], [0.5] * 6, [0.5] * 6)  # rows in another order
    c = write_run(tmp_path / "c", "fakecam", ids[:5], [0.9] * 5, [0.2] * 5)  # one image fewer
    # the variant: the same methods, deletion reversed
    a2 = write_run(tmp_path / "a2", "gradcam", ids, [0.9] * 6, [0.9] * 6)
    b2 = write_run(tmp_path / "b2", "scorecam", ids, [0.5] * 6, [0.5] * 6)
    c2 = write_run(tmp_path / "c2", "fakecam", ids, [0.1] * 6, [0.2] * 6)
    out = rank([entry(a), entry(b), entry(c), entry(a2, "v"), entry(b2, "v"), entry(c2, "v")], resamples=50)
    first = out.stability[out.stability["variant"] == ""]
    assert (first["images"] == 5).all()  # the ids all three scored
    assert first[first["metric"] == "deletion"][["method", "rank", "keeps_rank"]].values.tolist() == [
        ["gradcam", 1, 1.0],
        ["scorecam", 2, 1.0],
        ["fakecam", 3, 1.0],
    ]
    assert "the methods scored different images (gradcam 6, scorecam 6, fakecam 5); ranked on the 5" in out.notes[0]
    tau = out.metric_tau.set_index(["variant", "metric_a", "metric_b"])["tau"]
    assert tau[("", "deletion", "insertion")] == pytest.approx(1.0)
    assert tau[("v", "deletion", "insertion")] == pytest.approx(-1.0)
    variants = out.variant_tau.set_index("metric")
    assert variants.loc["deletion", "tau"] == pytest.approx(-1.0) and variants.loc["insertion", "tau"] == 1.0
    assert variants.loc["deletion", ["variant_a", "variant_b", "methods"]].tolist() == ["", "v", 3]
    text = ranking.to_markdown(out, lower={"deletion"})
    assert "| deletion ↓ | 1. gradcam (1.00), 2. scorecam (1.00), 3. fakecam (1.00) | 1.00 |" in text


def test_a_group_of_one_method_or_without_shared_images_is_not_ranked(tmp_path):
    a = write_run(tmp_path / "a", "gradcam", ["x", "y"], [0.1, 0.2], [0.5, 0.6])
    b = write_run(tmp_path / "b", "scorecam", ["z", "w"], [0.1, 0.2], [0.5, 0.6])
    out = rank([entry(a), entry(b), entry(a, "alone")])
    assert out.stability.empty and out.variant_tau.empty
    assert out.notes[-2].endswith("fewer than 2 images in common, not ranked")
    assert out.notes[-1] == "resnet18 / shapes / alone: one method only (gradcam), nothing to rank"
