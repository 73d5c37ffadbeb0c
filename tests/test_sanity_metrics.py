"""Map complexity (Gini sparseness, entropy), class sensitivity (random logit test) and max/avg
sensitivity: exact values on hand-made maps, agreement with Quantus, skimage, scipy and Captum on
the same maps and perturbations, seeded reproducibility and the option checks."""

import math

import numpy as np
import pytest
import torch
from conftest import make_engine, make_method
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

from cambench.methods import CAMOutput
from cambench.metrics import METRICS, MetricContext, MetricError, MetricInput, build_metric
from cambench.metrics.class_sensitivity import banded, other_classes, ssim
from cambench.metrics.correlation import average_ranks, spearman
from cambench.metrics.map_complexity import entropy, gini
from cambench.metrics.sensitivity import sensitivities, uniform_noise
from cambench.models.engine import Passes

CLASSES = 5


class Tiny(nn.Module):
    """conv (target layer) -> ReLU -> global average pool -> linear: five classes, random weights."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(6, CLASSES)

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.relu(self.conv(x)))))


def metric_input(images: torch.Tensor, out: CAMOutput) -> MetricInput:
    return MetricInput.of(out, images, [str(i) for i in range(len(images))], labels=out.targets)


def images(batch: int = 3, size: tuple[int, int] = (16, 20)) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))


def test_registered_with_their_columns_and_directions():
    assert METRICS["map_complexity"].names == ("sparseness", "entropy")
    assert METRICS["map_complexity"].lower_is_better == {"entropy"}
    assert METRICS["class_sensitivity"].lower_is_better == {"class_similarity"}
    assert METRICS["sensitivity"].lower_is_better == {"max_sensitivity", "avg_sensitivity"}


# map complexity
# ----------------------------------------------------------------------------------------------------


def test_gini_and_entropy_exact_on_hand_made_maps():
    n = 16
    one_hot = torch.zeros(4, 4)
    one_hot[1, 2] = 0.7
    maps = torch.stack([one_hot, torch.full((4, 4), 0.3), torch.tensor([[0.0, 0.0], [1.0, 3.0]]).repeat(2, 2)])
    # [0, 0, 1, 3] four times: sorted 0 x 8, 1 x 4, 3 x 4;
    # sum (2i - n - 1) x_(i) = (1 + 3 + 5 + 7) + 3 (9 + 11 + 13 + 15)
    torch.testing.assert_close(gini(maps), torch.tensor([(n - 1) / n, 0.0, (16 + 3 * 48) / (16 * 16)]))
    p = torch.tensor([1 / 16, 3 / 16])  # four pixels each
    torch.testing.assert_close(entropy(maps), torch.tensor([0.0, math.log(n), float(-4 * (p * p.log()).sum())]))
    zero = torch.zeros(1, 4, 4)
    assert gini(zero).isnan().all() and entropy(zero).isnan().all()


def test_map_complexity_agrees_with_quantus_sparseness_and_complexity():
    np.trapz = np.trapezoid  # Quantus 0.6 calls np.trapz (removed in numpy 2.4)
    import quantus

    generator = torch.Generator().manual_seed(2)
    maps = torch.rand(4, 24, 20, generator=generator) ** 3 * 0.8  # max < 1: Quantus's normalise-by-max is active
    maps[0, :12] = 0  # exact zeros
    x = torch.rand(4, 3, 24, 20, generator=generator).numpy()
    y = np.zeros(4, dtype=int)
    # Quantus's defaults (abs=True, normalise=True): no-ops here (non-negative maps, scale-invariant measures)
    quantus_gini = quantus.Sparseness(disable_warnings=True)(
        model=None, x_batch=x, y_batch=y, a_batch=maps[:, None].numpy().copy()
    )
    quantus_entropy = quantus.Complexity(disable_warnings=True)(
        model=None, x_batch=x, y_batch=y, a_batch=maps[:, None].numpy().copy()
    )
    metric = build_metric("map_complexity", MetricContext(None, None))  # needs neither engine nor method
    out = CAMOutput(maps, maps, torch.zeros(4, CLASSES), torch.zeros(4, dtype=torch.long), Passes(forward=1))
    values = metric.update(metric_input(torch.from_numpy(x), out))
    # Quantus adds 1e-7 to each value before the Gini index and takes log(p + 1e-12): differences ~1e-7
    torch.testing.assert_close(values["sparseness"], torch.tensor(quantus_gini, dtype=torch.float32), atol=2e-6, rtol=0)
    torch.testing.assert_close(values["entropy"], torch.tensor(quantus_entropy, dtype=torch.float32), atol=2e-6, rtol=0)
    torch.testing.assert_close(metric.compute()["entropy"], values["entropy"].mean())


# class sensitivity
# ----------------------------------------------------------------------------------------------------


def test_other_classes_are_seeded_uniform_and_never_the_target():
    targets = torch.arange(CLASSES).repeat(2000)
    draws = other_classes(targets, CLASSES, torch.Generator().manual_seed(0))
    assert (draws != targets).all() and draws.min() >= 0 and draws.max() < CLASSES
    assert torch.equal(draws, other_classes(targets, CLASSES, torch.Generator().manual_seed(0)))
    assert not torch.equal(draws, other_classes(targets, CLASSES, torch.Generator().manual_seed(1)))
    counts = torch.bincount(draws[targets == 0], minlength=CLASSES).float()  # 2000 draws over classes 1..4
    assert counts[0] == 0 and ((counts[1:] - 500).abs() < 100).all()


def test_ssim_matches_skimage_gaussian_ssim():
    generator = torch.Generator().manual_seed(3)
    a = torch.rand(3, 23, 31, dtype=torch.float64, generator=generator)
    b = (a + 0.3 * torch.rand(3, 23, 31, dtype=torch.float64, generator=generator)).clamp(0, 1)
    b[2] = torch.rand(23, 31, dtype=torch.float64, generator=generator)  # unrelated
    expected = [
        structural_similarity(
            p.numpy(), q.numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1
        )
        for p, q in zip(a, b, strict=True)
    ]
    torch.testing.assert_close(ssim(a, b), torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=0)
    assert torch.equal(ssim(a, a), torch.ones(3))
    with pytest.raises(ValueError, match="11 x 11"):
        ssim(a[:, :10], b[:, :10])


def test_banded_matrix_is_the_valid_correlation_with_the_kernel():
    kernel = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    assert banded(kernel, 5).tolist() == [[1, 2, 4, 0, 0], [0, 1, 2, 4, 0], [0, 0, 1, 2, 4]]
    x = torch.arange(5.0, dtype=torch.float64)
    assert (banded(kernel, 5) @ x).tolist() == [10.0, 17.0, 24.0]  # 0 + 2 + 8, 1 + 4 + 12, 2 + 6 + 16


def test_spearman_matches_scipy_with_ties():
    generator = torch.Generator().manual_seed(4)
    a = (torch.rand(3, 9, 7, generator=generator) * 4).floor()  # many ties
    b = a + (torch.rand(3, 9, 7, generator=generator) * 3).floor()
    expected = [spearmanr(p.flatten(), q.flatten())[0] for p, q in zip(a, b, strict=True)]
    torch.testing.assert_close(spearman(a, b), torch.tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(
        average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0]])), torch.tensor([[3.5, 1, 3.5, 2]], dtype=torch.float64)
    )
    assert spearman(a, torch.zeros_like(a)).isnan().all()  # constant: undefined


class ClassMaps:
    """A stub method whose map is a function of the class only: ``maps(c)`` (H, W)."""

    def __init__(self, maps):
        self.maps, self.calls = maps, []

    def explain(self, images, targets=None, ids=None):
        targets = torch.zeros(len(images), dtype=torch.long) if targets is None else targets
        self.calls.append(targets.clone())
        maps = torch.stack([self.maps(int(c)) for c in targets])
        return CAMOutput(maps, maps, torch.zeros(len(images), CLASSES), targets, Passes(forward=1))


def class_similarity(method, similarity: str, targets: torch.Tensor, seed: int = 0) -> torch.Tensor:
    ctx = MetricContext(make_engine(Tiny(), "conv", seed=seed), method)
    x = images(len(targets))
    out = method.explain(x, targets)
    return build_metric("class_sensitivity", ctx, similarity=similarity).update(metric_input(x, out))[
        "class_similarity"
    ]


@pytest.mark.parametrize("similarity", ["ssim", "spearman"])
def test_a_class_independent_method_gives_one(similarity):
    method = make_method("edgecam", Tiny(), "conv")
    ctx = MetricContext(method.engine, method)
    x = images(4)
    out = method.explain(x)
    values = build_metric("class_sensitivity", ctx, similarity=similarity).update(metric_input(x, out))
    assert torch.equal(values["class_similarity"], torch.ones(4))


def test_class_dependent_stub_gives_the_hand_computed_values():
    targets = torch.tensor([0, 1, 2, 3, 4, 0])
    # constant maps c / 10: SSIM reduces to the luminance term (2 a b + C1) / (a^2 + b^2 + C1), C1 = 0.01^2
    method = ClassMaps(lambda c: torch.full((16, 20), c / 10))
    values = class_similarity(method, "ssim", targets)
    other = method.calls[-1]
    assert (other != targets).all()
    a, b, c1 = targets / 10, other / 10, 0.01**2
    torch.testing.assert_close(values, ((2 * a * b + c1) / (a * a + b * b + c1)).float())
    # a ramp for even classes, the reversed ramp for odd ones: rank correlation +1 or -1
    ramp = torch.arange(16 * 20, dtype=torch.float32).view(16, 20) / 319
    method = ClassMaps(lambda c: ramp if c % 2 == 0 else 1 - ramp)
    values = class_similarity(method, "spearman", targets)
    other = method.calls[-1]
    expected = torch.where(other % 2 == targets % 2, 1.0, -1.0)
    torch.testing.assert_close(values, expected)


def test_class_sensitivity_is_seeded():
    targets = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    first, second, other_seed = (ClassMaps(lambda c: torch.full((16, 20), c / 10)) for _ in range(3))
    class_similarity(first, "ssim", targets)
    class_similarity(second, "ssim", targets)
    class_similarity(other_seed, "ssim", targets, seed=1)
    assert torch.equal(first.calls[-1], second.calls[-1])
    assert not torch.equal(first.calls[-1], other_seed.calls[-1])


# sensitivity
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalise", [True, False])
def test_max_sensitivity_agrees_with_captum_on_the_same_perturbations(normalise):
    from captum.metrics import sensitivity_max

    method = make_method("gradcam", Tiny(), "conv")
    x = images(3)
    out = method.explain(x)
    samples, radius = 4, 0.3
    noise = uniform_noise(x, samples, radius, torch.Generator().manual_seed(5))
    assert noise.abs().max() <= radius and noise.abs().max() > 0.9 * radius
    s = sensitivities(method, x, out.maps, out.targets, noise, normalise)
    assert (s > 0).all()

    def perturb(inputs):  # Captum repeats each input `samples` times (repeat_interleave): our row order
        return inputs + noise.flatten(0, 1)

    def explain(inputs, target):  # Captum iterates over the clean call's output: a tuple of tensors
        return (method.explain(inputs[0] if isinstance(inputs, tuple) else inputs, target).maps,)

    captum = sensitivity_max(explain, x, perturb_func=perturb, n_perturb_samples=samples, target=out.targets)
    if not normalise:  # Captum always divides by ||L(x)||_F
        captum = captum * out.maps.flatten(1).norm(dim=1)
    torch.testing.assert_close(s.amax(1).float(), captum.float(), atol=1e-6, rtol=1e-6)


class Counting:
    """Wraps a method and records the size and targets of every call."""

    def __init__(self, method):
        self.method, self.calls = method, []

    def explain(self, images, targets=None, ids=None):
        self.calls.append((len(images), targets.clone()))
        return self.method.explain(images, targets)


def sensitivity_values(seed: int = 0, **params) -> tuple[dict[str, torch.Tensor], Counting]:
    method = make_method("gradcam", Tiny(), "conv", seed=seed)
    counting = Counting(method)
    x = images(3)
    out = method.explain(x, torch.tensor([4, 0, 2]))
    metric = build_metric("sensitivity", MetricContext(method.engine, counting), **params)
    return metric.update(metric_input(x, out)), counting


def test_sensitivity_metric_batches_by_sample_and_keeps_the_targets():
    values, counting = sensitivity_values(samples=3)
    assert [size for size, _ in counting.calls] == [3, 3, 3]  # B N rows in N calls of B
    targets = torch.cat([t for _, t in counting.calls])
    assert torch.equal(targets, torch.tensor([4, 0, 2]).repeat_interleave(3))
    assert (values["max_sensitivity"] >= values["avg_sensitivity"]).all() and (values["avg_sensitivity"] > 0).all()


def test_sensitivity_is_seeded_and_normalise_divides_by_the_map_norm():
    first, _ = sensitivity_values()
    again, _ = sensitivity_values()
    other, _ = sensitivity_values(seed=1)
    for name in ("max_sensitivity", "avg_sensitivity"):
        assert torch.equal(first[name], again[name])
        assert not torch.equal(first[name], other[name])
    raw, _ = sensitivity_values(normalise=False)
    method = make_method("gradcam", Tiny(), "conv")
    norms = method.explain(images(3), torch.tensor([4, 0, 2])).maps.flatten(1).norm(dim=1)
    torch.testing.assert_close(raw["max_sensitivity"], first["max_sensitivity"] * norms)


def test_sensitivity_of_an_all_zero_map_is_divided_by_one_as_captum():
    method = ClassMaps(lambda c: torch.ones(16, 20))  # L(x + d) = 1 everywhere, L(x) = 0 given
    x = images(2)
    zero = torch.zeros(2, 16, 20)
    s = sensitivities(method, x, zero, torch.tensor([0, 1]), uniform_noise(x, 2, 0.1, torch.Generator()), True)
    torch.testing.assert_close(s, torch.full((2, 2), math.sqrt(16 * 20), dtype=torch.float64))


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("sensitivity", {"samples": 0}),
        ("sensitivity", {"radius": 0.0}),
        ("sensitivity", {"radius": -0.1}),
        ("class_sensitivity", {"similarity": "pearson"}),
    ],
)
def test_bad_options_raise(name, params):
    method = make_method("gradcam", Tiny(), "conv")
    with pytest.raises(MetricError):
        build_metric(name, MetricContext(method.engine, method), **params)


def test_explainers_that_fail_a_sanity_check_are_flagged_in_the_summary():
    import pandas as pd

    from cambench.analysis.verdicts import beside_baselines

    def summary(similarity: float, spearman_mean: float) -> pd.DataFrame:
        return pd.DataFrame(
            {"metric": ["class_similarity", "randomisation_spearman"], "mean": [similarity, spearman_mean]}
        )

    summaries = {"gradcam": summary(0.3, 0.2), "edgecam": summary(1.0, 1.0), "noisecam": summary(0.89, 0.95)}
    metrics = {name: METRICS[name] for name in ("class_sensitivity", "model_randomisation")}
    flagged, line = beside_baselines(summaries, "gradcam", metrics)
    assert flagged["flag"].tolist() == [
        "edgecam fails (1.000 >= 0.9)",
        "edgecam fails (1.000 >= 0.9) noisecam fails (0.950 >= 0.9)",
    ]
    assert line == "edgecam fails: class_similarity, randomisation_spearman; noisecam fails: randomisation_spearman"
    # the method itself fails: its own summary says so
    flagged, line = beside_baselines({"edgecam": summary(1.0, 0.5)}, "edgecam", metrics)
    assert flagged["flag"].tolist() == ["method fails (1.000 >= 0.9)", ""]
    assert line == "method fails: class_similarity"
