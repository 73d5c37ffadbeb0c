"""The methods that group channels: batched k-means and the elbow rule (hand-made points and curves
whose answers are known), Cosine-CAM and Cluster-CAM against the seed project's pipeline rebuilt
one image at a time with scikit-learn's KMeans and plain model calls, Ablation-CAM++ against
Ablation-CAM and the closed form of a linear tail; declared passes, seeds, and batches that do not
change an image's map."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_engine, make_method
from sklearn.cluster import KMeans
from test_methods_perturbation import Stub, capture, images_
from torch import Tensor, nn

from cambench.data.blur import sampled_gaussian_blur
from cambench.methods import MethodError, build_method
from cambench.methods.clustering import elbow, kmeans
from cambench.methods.cosinecam import upsampled_points
from cambench.models.engine import Passes

SIZE = 64

# ----------------------------------------------------------------------------------------------
# k-means and the elbow rule

# three blobs of four points (unit squares): within-blob squared deviation 2 each
BLOBS = torch.tensor(
    [[0.0, 0], [0, 1], [1, 0], [1, 1], [10, 10], [10, 11], [11, 10], [11, 11], [0, 10], [1, 10], [0, 11], [1, 11]]
)
ORDER = torch.tensor([5, 0, 9, 2, 11, 7, 1, 4, 10, 3, 8, 6])  # shuffled, so no cluster sits in one block
TRUTH = (torch.arange(12) // 4)[ORDER]


def same_partition(labels: Tensor, truth: Tensor) -> bool:
    pairs = torch.stack([labels, truth], 1).unique(dim=0)
    return len(pairs) == len(truth.unique()) == len(labels.unique())


def test_kmeans_finds_known_clusters_and_inertias_with_per_run_counts():
    """Run 0 with 3 clusters finds the blobs (inertia 3 x 2); run 1 with one cluster has the total
    squared deviation from the grand mean: 6 + 4 sum_blob |c_blob - m|^2 = 6 + 4 (400 / 3) = 539.33."""
    out = kmeans(BLOBS[ORDER][None], torch.tensor([[3, 1]]), torch.Generator().manual_seed(0))
    assert same_partition(out.labels[0, 0], TRUTH)
    assert (out.labels[0, 1] == 0).all()
    torch.testing.assert_close(out.inertia[0], torch.tensor([6.0, 6 + 4 * 400 / 3]))


def test_kmeans_padding_and_batch_neighbours_change_nothing():
    """Weight-0 padding points and another problem in the same batch leave a problem's clusters as they are."""
    points = BLOBS[ORDER]
    alone = kmeans(points[None], torch.tensor([[3]]), torch.Generator().manual_seed(0))
    padded = torch.cat([points, torch.full((3, 2), 100.0)])[None]
    weights = torch.cat([torch.ones(12), torch.zeros(3)])[None]
    with_padding = kmeans(padded, torch.tensor([[3]]), torch.Generator().manual_seed(0), weights)
    assert (with_padding.labels[0, 0, :12] == alone.labels[0, 0]).all()
    torch.testing.assert_close(with_padding.inertia, alone.inertia)
    other = torch.randn(12, 2, generator=torch.Generator().manual_seed(5)) * 7
    batch = kmeans(torch.stack([other, points]), torch.tensor([[3], [3]]), torch.Generator().manual_seed(0))
    assert (batch.labels[1] == alone.labels[0]).all()


def test_kmeans_seeded_and_close_to_scikit_learn():
    """Uniform points have many local optima: the seed decides (same seed, same clusters; another
    seed, others), and each run ends near scikit-learn's inertia for the same count."""
    points = torch.rand(1, 60, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64).float()
    counts = torch.tensor([[6]])
    runs = [kmeans(points, counts, torch.Generator().manual_seed(s)).labels for s in (0, 0, 1)]
    assert (runs[0] == runs[1]).all() and (runs[0] != runs[2]).any()
    ours = kmeans(points, counts, torch.Generator().manual_seed(0)).inertia.item()
    theirs = KMeans(6, init="k-means++", n_init=1, random_state=0).fit(points[0].double().numpy()).inertia_
    assert abs(ours - theirs) < 0.15 * theirs


def test_elbow_as_kneed():
    """Hand-computed Kneedle (kneed 0.8.3, convex decreasing, offline; checked against kneed itself
    on 2,100 random curves when written). y = 100, 40, 20, 14, 12 over k = 3..7: difference curve
    (1 - y_n) - x_n = 0, .432, .409, .227, 0; maximum at k = 4 with threshold .432 - .25 = .182;
    the curve falls below it at k = 7, so the elbow is 4. A flat curve has no maximum, and two points
    give a difference curve of zeros that never drops below its threshold: no elbow (-1)."""
    ks = torch.arange(3, 8)
    curves = torch.tensor([[100.0, 40, 20, 14, 12], [5.0] * 5, [100.0, 10, 9, 8.5, 8.4]])
    assert elbow(ks, curves).tolist() == [4, -1, 4]
    assert elbow(torch.tensor([3, 4]), torch.tensor([[10.0, 5.0]])).tolist() == [-1]


def test_upsampled_points_keep_the_inner_products_of_upsampled_maps():
    maps = torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(0))
    up = F.interpolate(maps, size=(11, 13), mode="bilinear", align_corners=False).flatten(2)
    points = upsampled_points(maps, (11, 13))
    torch.testing.assert_close(points @ points.transpose(1, 2), up @ up.transpose(1, 2), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# the seed project's pipeline, one image at a time (scikit-learn, plain calls of the full model)


class Grouped(nn.Module):
    """stem (8 x 8 patches) -> features: ``prototypes`` maps, each channel a positive multiple of one
    of them (0.8 to 1.2 times) plus a little noise -> GAP -> fc with positive weights (so mean(g_k A_k) has the sign
    of the prototype's mean: k-means, cosine or not, has one answer with one group a prototype)."""

    def __init__(self, channels: int = 24, prototypes: int = 3, classes: int = 4):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem = nn.Conv2d(3, prototypes, 8, stride=8)
        self.features = nn.Conv2d(prototypes, channels, 1)
        self.fc = nn.Linear(channels, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
            kind = torch.arange(channels) % prototypes
            scale = 0.8 + 0.4 * torch.rand(channels, generator=g)
            self.features.weight[:, :, 0, 0] = F.one_hot(kind, prototypes) * scale[:, None]
            self.features.weight.add_(0.02 * torch.randn(self.features.weight.shape, generator=g))
            self.features.bias.zero_()
            self.fc.weight.abs_()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(self.stem(x)).mean((2, 3)))


def seed_pipeline(model: nn.Module, x: Tensor, target: int, groups: int, cluster_cam: bool) -> Tensor:
    """The seed's Cosine-CAM (axiom maps, cosine k-means) or our Cluster-CAM reading (A_k, k-means,
    base and scissors) for one image: its channel_weight.py steps on maps enlarged to the input."""
    x = x[None]
    acts, _ = capture(model, "features", x)
    if cluster_cam:
        smap = acts
    else:
        a = acts.clone().requires_grad_(True)
        handle = model.features.register_forward_hook(lambda m, i, o: a)
        try:
            model(x)[0, target].backward()
        finally:
            handle.remove()
        smap = (a.grad * acts).mean((2, 3), keepdim=True) * acts
    k = smap.shape[1]
    enlarged = F.interpolate(smap, size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
    features = enlarged.view(k, -1)
    if not cluster_cam:
        features = F.normalize(features, dim=1)
    labels = KMeans(groups, init="k-means++", n_init=1, random_state=0).fit_predict(features.double().numpy())
    gmap = torch.from_numpy(np.stack([(labels == g) / (labels == g).sum() for g in range(groups)])).float()
    g_smap = (gmap @ enlarged.view(k, -1)).view(groups, *x.shape[-2:])
    lo, hi = g_smap.amin((1, 2), keepdim=True), g_smap.amax((1, 2), keepdim=True)
    masks = (g_smap - lo) / (hi - lo)
    blurred = sampled_gaussian_blur(x, 51, 50.0)
    with torch.no_grad():
        base = model(blurred)[0, target]
        gains = model(x * masks[:, None] + blurred * (1 - masks[:, None]))[:, target] - base
    weight = F.normalize(gains, dim=0)
    if cluster_cam:
        top, best, worst = weight.max(), weight.argmax(), weight.argmin()
        weight = torch.zeros(groups)
        weight[best], weight[worst] = top, top - 1
    saliency = (weight[:, None, None] * g_smap).sum(0)
    return saliency - saliency.median()


@pytest.mark.parametrize("name", ["cosinecam", "clustercam"])
def test_grouped_score_methods_match_the_seed_pipeline(name):
    model = Grouped()
    x, targets = images_(2), torch.tensor([1, 3])
    out = make_method(name, model, "features", **{"groups" if name == "cosinecam" else "clusters": 3})(x, targets)
    for b in range(2):
        expected = seed_pipeline(model, x[b], int(targets[b]), 3, name == "clustercam")
        assert (out.raw[b] - expected).abs().max() < 1e-4 * expected.abs().max()
    assert out.raw.shape == (2, SIZE, SIZE)  # at input resolution, as the seed's
    assert (out.maps.flatten(1).median(1).values == 0).all()  # median-centred, then ReLU


def test_elbow_groups_and_declared_passes():
    """K = 64 channels of 4 prototypes: the sweep runs G = 3..8 (ceil(sqrt(64)) = 8) and kneed's
    fallback 9; the inertia curve (scikit-learn's here) drops until G = 4 and flattens, so each
    image's elbow is 4, and the map is the one with 4 groups. Declared: 1 + (9 + 1) forward passes."""
    model = Grouped(channels=64, prototypes=4)
    x, targets = images_(2), torch.tensor([0, 2])
    a, _ = capture(model, "features", x)
    ks = torch.arange(3, 9)
    for name, key, cosine in (("cosinecam", "groups", True), ("clustercam", "clusters", False)):
        points = upsampled_points(a, (SIZE, SIZE))
        points = F.normalize(points, dim=-1) if cosine else points
        fits = [[KMeans(int(k), n_init=1, random_state=0).fit(p.double().numpy()).inertia_ for k in ks] for p in points]
        assert elbow(ks, torch.tensor(fits)).tolist() == [4, 4]
        auto = make_method(name, model, "features")(x, targets)
        assert auto.passes == Passes(forward=11, backward=1 if cosine else 0)
        fixed = make_method(name, model, "features", **{key: 4})(x, targets)
        assert (auto.raw - fixed.raw).abs().max() < 1e-5 * fixed.raw.abs().max()
    assert make_method("cosinecam", Stub(channels=5), "features").passes(5, 64) == Passes(forward=5, backward=1)


@pytest.mark.parametrize("name", ["cosinecam", "clustercam", "ablationcampp"])
def test_seeded_and_independent_of_the_batch(name):
    """Random channels (many k-means optima): the run's seed decides the groups; an image's map is
    the same alone as in a batch (each image's k-means draws the same seeded numbers)."""
    model = Stub(channels=30, relu=True)
    x, targets = images_(3), torch.tensor([0, 1, 2])
    maps = {s: make_method(name, model, "features", seed=s)(x, targets).maps for s in (0, 0, 1)}
    one = make_method(name, model, "features", seed=0)(x[2:], targets[2:]).maps
    assert (maps[0][2] - one[0]).abs().max() < 1e-5
    assert (
        make_method(name, model, "features", seed=0)(x, targets).maps - maps[0]
    ).abs().max() < 1e-5  # chunk rounding
    assert (maps[1] - maps[0]).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------
# Ablation-CAM++


def tail_rows(model: nn.Module, name: str, x: Tensor, targets: Tensor, **params) -> tuple:
    rows = []
    handle = model.fc.register_forward_pre_hook(lambda m, inputs: rows.append(len(inputs[0])))
    try:
        out = make_method(name, model, "features", **params)(x, targets)
    finally:
        handle.remove()
    return out, sum(rows) - len(x)  # less the clean pass


def test_ablationcampp_without_pruning_is_ablationcam_and_runs_every_node():
    """threshold = -inf: every group splits down to single channels, so each weight is Ablation-CAM's
    (nonlinear tail); the trees of G = 3 groups over K = 12 channels have 2K - G = 21 nodes, each one tail row."""
    model = Stub(channels=12, relu=True)
    x, targets = images_(), torch.tensor([0, 2])
    reference = make_method("ablationcam", model, "features")(x, targets)
    out, rows = tail_rows(model, "ablationcampp", x, targets, groups=3, threshold=-math.inf)
    assert out.passes == Passes(forward=1, tail=21)
    assert rows == 2 * 21
    assert (out.raw - reference.raw).abs().max() < 1e-5 * reference.raw.abs().max()


def test_ablationcampp_pruned_groups_share_their_weight_on_a_linear_tail():
    """Linear tail y = W mean(A) + b: ablating S lowers y_c by sum_{k in S} W_ck mean(A_k), so w_S is
    the sum of the group's Ablation-CAM weights. threshold = inf: only the G roots run, every channel
    gets w_S / |S| (one value per group), and the weights of each image still sum to Ablation-CAM's.
    The default threshold (0) prunes: fewer rows than the declared bound."""
    model = Stub(channels=12)
    x, targets = images_(), torch.tensor([1, 0])
    acts, logits = capture(model, "features", x)
    single = model.fc.weight.detach()[targets] * acts.mean((2, 3)) / logits[range(2), targets].abs()[:, None]
    roots, rows = tail_rows(model, "ablationcampp", x, targets, groups=3, threshold=math.inf)
    assert rows == 2 * 3
    weights = torch.linalg.lstsq(acts.flatten(2).transpose(1, 2), roots.raw.flatten(1)[..., None]).solution[..., 0]
    torch.testing.assert_close(weights.sum(1), single.sum(1), rtol=1e-4, atol=1e-5)
    assert all(len(torch.unique(w.round(decimals=4))) <= 3 for w in weights)
    _, pruned_rows = tail_rows(model, "ablationcampp", x, targets, groups=3)
    assert 2 * 3 < pruned_rows < 2 * 21


# ----------------------------------------------------------------------------------------------
# parameter checks


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("cosinecam", {"groups": -1}, "groups must be 0"),
        ("clustercam", {"clusters": 1}, ">= 2"),
        ("cosinecam", {"kernel_size": 50}, "odd kernel_size"),
        ("clustercam", {"sigma": 0.0}, "sigma > 0"),
        ("ablationcampp", {"groups": 0}, "groups >= 1"),
        ("ablationcampp", {"tolerance": -1.0}, "tolerance >= 0"),
    ],
)
def test_bad_parameters_name_the_fix(name, params, message):
    with pytest.raises(MethodError, match=message):
        build_method(name, make_engine(Stub(), "features"), **params)
