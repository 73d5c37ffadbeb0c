"""ROAD (Rong et al., ICML 2022): the imputation reproduces a linear image exactly and agrees with the
official imputer (pytorch-grad-cam's NoisyLinearImputer, scipy spsolve), the multigrid V-cycle is
symmetric and large holes converge in a few iterations, the metric agrees with pytorch-grad-cam's ROAD
averages, exact values with seeded noise on a stub model, the noise itself, and bad parameters."""

from pathlib import Path

import pytest
import torch
from conftest import make_method
from omegaconf import OmegaConf
from torch import nn

from cambench.methods import CAMOutput
from cambench.metrics import MetricContext, MetricError, MetricInput, build_metric
from cambench.metrics.deletion_insertion import pixel_ranks
from cambench.metrics.road import ROAD, SOLVE_ROWS, MaskedLaplacian, Multigrid, impute, solve_imputation
from cambench.models.engine import Passes
from cambench.params import fields

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = {(-1, -1): 1 / 12, (-1, 0): 1 / 6, (-1, 1): 1 / 12, (0, -1): 1 / 6}
WEIGHTS |= {(-i, -j): w for (i, j), w in WEIGHTS.items()}


class MeanLogit(nn.Module):
    """Two classes with logits (mean of channel 0 of the image, 0); a 1 x 1 convolution first, to split at."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.head(self.conv(x))


def small_cnn() -> nn.Module:
    """A random CNN whose class probabilities move with the image (a head scaled up 30 times)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()  # fmt: skip
    with torch.no_grad():
        model[-1].weight.mul_(30)
    return model


def context(model: nn.Module, layer: str, seed: int = 0) -> MetricContext:
    method = make_method("gradcam", model, layer, seed=seed)
    return MetricContext(method.engine, method)


def metric_input(images: torch.Tensor, maps: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> MetricInput:
    out = CAMOutput(maps, maps, logits, targets, Passes(forward=1))
    return MetricInput.of(out, images, [str(i) for i in range(len(images))], labels=targets)


def blob(h: int, w: int, cy: float, cx: float, sigma: float) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return torch.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * sigma**2))


def neighbour_mean(plane: torch.Tensor, i: int, j: int) -> float:
    """The weighted mean of the in-image neighbours of (i, j), by hand."""
    h, w = plane.shape
    inside = [(i + di, j + dj, wt) for (di, dj), wt in WEIGHTS.items() if 0 <= i + di < h and 0 <= j + dj < w]
    return sum(wt * plane[a, b].item() for a, b, wt in inside) / sum(wt for *_, wt in inside)


def test_a_linear_image_is_imputed_exactly_inside():
    h, w = 40, 36
    rows, cols = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    images = torch.stack([0.05 * rows - 0.03 * cols + 1, 0.04 * cols - 0.02 * rows, 0.01 * (rows + cols) - 2])[None]
    removed = torch.zeros(1, 1, h, w, dtype=torch.bool)
    removed[..., 2:37, 1:30] = True  # 1015 of 1440 pixels, none on the border
    removed[..., 20:30, 32:34] = True
    out = impute(images, removed, noise=0.0, tol=1e-8)
    assert (out - images)[removed.expand_as(images)].abs().max() < 1e-5  # measured 2.4e-7
    assert torch.equal(out[~removed.expand_as(images)], images[~removed.expand_as(images)])


def test_a_hole_ringed_by_zeros_is_filled_with_zeros_at_once():
    images = torch.ones(1, 2, 16, 16)
    images[:, 0, 3:13, 3:13] = 0.0  # channel 0: the hole's kept neighbours are all 0, pixels further out 1
    removed = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    removed[..., 4:12, 4:12] = True
    out, iterations = solve_imputation(images, removed, tol=1e-6, max_iter=50)
    assert torch.equal(out[:, 0], images[:, 0]) and iterations <= 2  # zeros, not 50 iterations chasing 0


@pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")  # scipy's spsolve under numpy 2
@pytest.mark.parametrize("shape", [(12, 12), (17, 23), (40, 33)])
def test_imputation_agrees_with_the_official_imputer(shape):
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer

    h, w = shape
    generator = torch.Generator().manual_seed(h * w)
    images = torch.randn(5, 3, h, w, generator=generator)
    share = torch.tensor([0.1, 0.5, 0.9, 0.0, 0.0]).view(5, 1, 1, 1)
    removed = torch.rand(5, 1, h, w, generator=generator) < share
    removed[1, 0, 0, 0] = removed[1, 0, -1, -1] = True  # corners
    removed[3, 0, : 2 * h // 3, w // 4 :] = True  # a large hole on the top and right borders
    removed[4] = blob(h, w, h / 2, w / 3, max(h, w) / 4) > 0.2  # a blob over most of the image
    assert removed.flatten(1).any(1).all() and not removed.flatten(1).all(1).any()
    ours = impute(images, removed, noise=0.0, tol=1e-8)
    imputer = NoisyLinearImputer(noise=0.0)
    theirs = torch.stack([imputer(x, (~r[0]).float()) for x, r in zip(images, removed, strict=True)])
    assert (ours - theirs).abs().max() < 1e-5  # measured up to 6e-7


def test_the_vcycle_is_symmetric_and_positive_and_large_holes_take_few_iterations():
    u = (blob(40, 33, 15, 20, 9) > 0.02).double()[None, None].expand(2, 1, 40, 33)
    vcycle = Multigrid(MaskedLaplacian(u))
    assert len(vcycle.levels) == 4  # 40 x 33 -> 20 x 17 -> 10 x 9 (90 pixels) -> 5 x 5 by Cholesky
    a, b = (torch.randn(2, 3, 40, 33, dtype=torch.float64) * u for _ in range(2))
    assert torch.allclose((vcycle(a) * b).sum(), (a * vcycle(b)).sum(), rtol=1e-12)
    assert (vcycle(a) * a).sum((2, 3)).min() > 0
    # 90% removed most relevant first at 224 px: a handful of iterations, not hundreds
    maps = torch.stack([blob(224, 224, 100, 120, 40), blob(224, 224, 60, 170, 25)])
    ranks = pixel_ranks(maps, torch.Generator().manual_seed(0)).view(2, 1, 224, 224)
    images = torch.nn.functional.avg_pool2d(torch.randn(2, 3, 232, 232), 9, 1) * 3 - 1
    _, iterations = solve_imputation(images, ranks < round(0.9 * 224 * 224))
    assert iterations <= 12  # measured 8 (7 to 10 on other holes)


@pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")
@pytest.mark.parametrize("output", ["probability", "logit"])
def test_the_metric_agrees_with_pytorch_grad_cams_road(monkeypatch, output):
    import pytorch_grad_cam.metrics.road as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget, ClassifierOutputTarget

    class Noiseless(pgc.NoisyLinearImputer):  # the ROAD classes build NoisyLinearImputer() with noise 0.01
        def __init__(self):
            super().__init__(noise=0.0)

    monkeypatch.setattr(pgc, "NoisyLinearImputer", Noiseless)
    model = small_cnn()
    images, maps = torch.randn(4, 3, 10, 10), torch.rand(4, 10, 10)  # 100 distinct map values an image
    with torch.no_grad():
        logits = model(images)
    targets = torch.tensor([0, 1, 2, 3])
    ours = build_metric("road", context(model, "2"), noise=0.0, output=output, tol=1e-8)
    values = ours.update(metric_input(images, maps, logits, targets))
    # pytorch-grad-cam: percentile q keeps the q% below the threshold (removes 100 - q%), returns score - clean
    target = ClassifierOutputSoftmaxTarget if output == "probability" else ClassifierOutputTarget
    pgc_targets = [target(int(t)) for t in targets]
    clean = logits.softmax(1) if output == "probability" else logits
    clean = clean.gather(1, targets[:, None])[:, 0].numpy()
    morf = pgc.ROADMostRelevantFirstAverage()(images, maps.numpy(), pgc_targets, model) + clean
    lerf = pgc.ROADLeastRelevantFirstAverage()(images, maps.numpy(), pgc_targets, model) + clean
    combined = pgc.ROADCombined()(images, maps.numpy(), pgc_targets, model)
    assert (values["road_morf"] - torch.from_numpy(morf)).abs().max() < 1e-5  # measured up to 4e-7
    assert (values["road_lerf"] - torch.from_numpy(lerf)).abs().max() < 1e-5
    assert (values["road_difference"] - 2 * torch.from_numpy(combined)).abs().max() < 1e-5
    assert (values["road_lerf"] - values["road_morf"]).abs().min() > 1e-3  # the orderings differ, 100x the tolerance


def test_exact_values_with_seeded_noise_on_a_mean_logit_model():
    model = MeanLogit().eval()
    images = torch.rand(2, 3, 4, 4)
    maps = torch.rand(2, 4, 4) * 0.5 + 0.25
    top, bottom = [(0, 0), (2, 3)], [(3, 0), (1, 1)]  # never two of a set next to each other
    for rank, (i, j) in enumerate(top):
        maps[:, i, j] = 1 - rank * 0.1
    for rank, (i, j) in enumerate(bottom):
        maps[:, i, j] = rank * 0.1
    targets = torch.zeros(2, dtype=torch.long)
    with torch.no_grad():
        logits = model(images)
    ctx = context(model, "conv")
    params = {"percentages": [6.25, 12.5], "noise": 0.3, "output": "logit", "tol": 1e-9}  # 1 and 2 pixels
    values = build_metric("road", ctx, **params).update(metric_input(images, maps, logits, targets))
    # the draws: the ranks' tie-break keys, then one normal draw per solve chunk of the 8 rows
    generator = ctx.generator(torch.device("cpu"))
    pixel_ranks(maps, generator)
    chunk = SOLVE_ROWS["cpu"]
    draws = torch.cat([torch.randn(min(chunk, 8 - s), 3, 4, 4, generator=generator) for s in range(0, 8, chunk)])
    draws = draws.view(2, 4, 3, 4, 4)
    expected = torch.zeros(2, 4)  # logit = mean of channel 0 of each imputed image
    for b in range(2):
        for row, pixels in enumerate([top[:1], top, bottom[:1], bottom]):
            plane = images[b, 0].clone()
            for i, j in pixels:  # no removed neighbours: each fill is the mean of its neighbours
                plane[i, j] = neighbour_mean(images[b, 0], i, j) + 0.3 * draws[b, row, 0, i, j]
            expected[b, row] = plane.mean()
    torch.testing.assert_close(values["road_morf"], expected[:, :2].mean(1))
    torch.testing.assert_close(values["road_lerf"], expected[:, 2:].mean(1))
    torch.testing.assert_close(values["road_difference"], expected[:, 2:].mean(1) - expected[:, :2].mean(1))
    again = build_metric("road", ctx, **params).update(metric_input(images, maps, logits, targets))
    assert all(torch.equal(values[k], again[k]) for k in ROAD.names)
    other = build_metric("road", context(model, "conv", seed=1), **params)
    reseeded = other.update(metric_input(images, maps, logits, targets))
    assert (reseeded["road_morf"] - values["road_morf"]).abs().min() > 1e-4


def test_the_noise_is_only_on_the_removed_pixels_with_its_std():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 32, 32, generator=generator)
    removed = torch.rand(16, 1, 32, 32, generator=generator) < 0.5
    noisy = impute(images, removed, noise=0.05, generator=torch.Generator().manual_seed(1))
    clean = impute(images, removed, noise=0.0)
    mask = removed.expand_as(images)
    difference = noisy - clean
    assert torch.equal(difference[~mask], torch.zeros_like(difference[~mask]))
    on_removed = difference[mask].double()
    assert len(on_removed) > 20000
    assert on_removed.std().item() == pytest.approx(0.05, rel=0.02)  # sd of the estimate: 0.5%
    assert abs(on_removed.mean().item()) < 4 * 0.05 / len(on_removed) ** 0.5


def test_bad_parameters_are_refused():
    ctx = context(MeanLogit().eval(), "conv")
    for percentages in ([0, 50], [10, 100], []):
        with pytest.raises(MetricError, match=r"each in \(0, 100\)"):
            build_metric("road", ctx, percentages=percentages)
    with pytest.raises(MetricError, match="noise must be >= 0"):
        build_metric("road", ctx, noise=-0.01)
    with pytest.raises(MetricError, match="output must be one of logit, probability"):
        build_metric("road", ctx, output="softmax")
    with pytest.raises(MetricError, match="tol > 0 and max_iter >= 1"):
        build_metric("road", ctx, tol=0.0)
    with pytest.raises(MetricError, match="tol > 0 and max_iter >= 1"):
        build_metric("road", ctx, max_iter=0)
    images, maps = torch.rand(1, 3, 10, 10), torch.rand(1, 10, 10)
    batch = metric_input(images, maps, torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    with pytest.raises(MetricError, match=r"remove all 100 pixels .* use percentages below 99\.5"):
        build_metric("road", ctx, percentages=[50, 99.6]).update(batch)
    with pytest.raises(MetricError, match="keep at least one pixel"):
        impute(images, torch.ones(1, 1, 10, 10, dtype=torch.bool), noise=0.0)


def test_the_config_file_sets_every_parameter_to_its_default():
    node = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/metrics/road.yaml"))["road"]
    defaults = {name: default for name, (_, default) in fields(ROAD.Params).items()}
    assert node.keys() == defaults.keys()
    assert tuple(node.pop("percentages")) == defaults.pop("percentages")
    assert node == defaults
