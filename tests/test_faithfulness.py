"""Average Drop / Increase / Gain, Coherency, Complexity and ADCC: exact values on a stub model whose
class probability is known in closed form, both ADCC aggregations, the Fake-CAM arithmetic of the
definitions, and agreement with TorchCAM's ClassificationMetric on the same maps."""

import math
from functools import partial

import pandas as pd
import pytest
import torch
from conftest import make_method
from scipy.stats import pearsonr
from torch import nn

from cambench.analysis.statistics import summarise
from cambench.methods import CAMOutput
from cambench.metrics import MetricContext, MetricError, MetricInput, build_metric
from cambench.metrics.adcc import adcc, adcc_of_means, coherency, complexity
from cambench.metrics.confidence import confidence_changes
from cambench.models.engine import Passes
from cambench.models.scorer import class_scores


class MeanLogit(nn.Module):
    """Two classes with logits (mean of channel 0 of the image, 0): p(0 | x) = sigmoid(mean x_0).
    A 1 x 1 convolution first, so the model can be split at ``conv`` like a CNN."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0
            self.fc.weight.copy_(torch.eye(2))

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.conv(x))))


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def log_odds(p: torch.Tensor) -> torch.Tensor:
    return p.double().logit()


def test_confidence_changes_exact():
    clean = torch.tensor([0.5, 0.8, 1.0, 0.4])
    explained = torch.tensor([0.25, 0.9, 0.5, 0.4])
    values = confidence_changes(log_odds(clean), log_odds(explained))
    torch.testing.assert_close(values["average_drop"], torch.tensor([0.5, 0.0, 0.5, 0.0]))
    torch.testing.assert_close(values["increase_in_confidence"], torch.tensor([0.0, 1.0, 0.0, 0.0]))  # a tie: none
    torch.testing.assert_close(values["average_gain"], torch.tensor([0.0, 0.5, 0.0, 0.0]))  # Y = 1: gain 0, not 0/0


def test_average_gain_is_well_conditioned_for_confident_predictions():
    """Y = sigmoid(20) is 1 in float32: as probabilities 1 - Y = 0 and the gain is 0/0; from the log-odds, a
    change of the clean log-odds by 1e-6 (a last-bit change of a logit) moves the gain by about 1e-6."""
    clean, explained = torch.tensor([20.0, 20.0 + 1e-6]), torch.tensor([21.0, 21.0])
    gain = confidence_changes(clean, explained)["average_gain"]
    expected = 1 - math.exp(-21) / math.exp(-20) * (1 + math.exp(-20)) / (1 + math.exp(-21))
    torch.testing.assert_close(gain, torch.tensor([expected, expected]), rtol=0, atol=2e-6)
    logits = torch.tensor([[30.0, 10.0, 9.0]])
    # a difference of the log-odds within float32 rounding of the logits is no increase in confidence
    ties = confidence_changes(torch.tensor([3.0, 3.0]), torch.tensor([3.0 + 1e-5, 3.0 + 1e-3]))
    assert ties["increase_in_confidence"].tolist() == [0.0, 1.0]
    odds = class_scores(logits, torch.tensor([0]), "log_odds")
    torch.testing.assert_close(odds.double(), torch.tensor([30.0 - math.log(math.exp(10) + math.exp(9))]).double())


def test_coherency_is_the_released_codes_mapping_of_pearson_r():
    a = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]]).expand(4, 2, 2)
    b = torch.stack([2 * a[0] + 1, 3 - a[0], torch.full((2, 2), 0.5), torch.tensor([[1.0, 0.0], [0.0, 1.0]])])
    torch.testing.assert_close(coherency(a, b), torch.tensor([1.0, 0.0, 0.0, 0.5]))  # r = 1, -1, undefined, 0
    x, y = torch.rand(3, 8, 8, dtype=torch.float64), torch.rand(3, 8, 8, dtype=torch.float64)
    expected = [(pearsonr(p.flatten(), q.flatten())[0] + 1) / 2 for p, q in zip(x, y, strict=True)]
    torch.testing.assert_close(coherency(x, y), torch.tensor(expected, dtype=torch.float32))


def test_complexity_and_adcc_exact():
    torch.testing.assert_close(complexity(torch.tensor([[[0.0, 1.0], [0.5, 0.5]]])), torch.tensor([0.5]))
    # harmonic mean of 0.5, 1 - 0.25, 1 - 0.5: 3 / (2 + 4/3 + 2) = 0.5625; a zero term gives 0
    values = adcc(torch.tensor([0.5, 0.0]), torch.tensor([0.25, 0.1]), torch.tensor([0.5, 0.1]))
    torch.testing.assert_close(values, torch.tensor([0.5625, 0.0]))


def context(method_name: str, model: nn.Module) -> MetricContext:
    method = make_method(method_name, model, "conv")
    return MetricContext(method.engine, method)


def metric_input(images: torch.Tensor, out: CAMOutput) -> MetricInput:
    return MetricInput.of(out, images, [str(i) for i in range(len(images))], labels=out.targets)


def test_average_drop_increase_gain_on_a_stub_model_exact():
    model = MeanLogit().eval()
    images = torch.ones(2, 3, 2, 2)
    images[1, 0] = 2.0
    maps = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])  # image 0 keeps half its mean
    with torch.no_grad():
        logits = model(images)
    out = CAMOutput(maps, maps, logits, torch.tensor([0, 1]), Passes(forward=1))
    metric = build_metric("confidence", context("gradcam", model))
    values = metric.update(metric_input(images, out))
    # image 0, class 0: Y = sigmoid(1), O = sigmoid(0.5); image 1, class 1: Y = O = 1 - sigmoid(2)
    y0, o0 = sigmoid(1.0), sigmoid(0.5)
    torch.testing.assert_close(values["average_drop"], torch.tensor([(y0 - o0) / y0, 0.0]))
    torch.testing.assert_close(values["increase_in_confidence"], torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(values["average_gain"], torch.tensor([0.0, 0.0]))
    # class 1 on image 0 gains: Y = 1 - sigmoid(1), O = 1 - sigmoid(0.5)
    out = CAMOutput(maps[:1], maps[:1], logits[:1], torch.tensor([1]), Passes(forward=1))
    gained = metric.update(metric_input(images[:1], out))
    torch.testing.assert_close(gained["average_gain"], torch.tensor([(y0 - o0) / y0]))
    torch.testing.assert_close(gained["increase_in_confidence"], torch.tensor([1.0]))
    torch.testing.assert_close(metric.compute()["average_drop"], torch.tensor((y0 - o0) / y0 / 3))


def test_fakecam_adcc_is_the_arithmetic_of_the_definitions():
    model = MeanLogit().eval()
    images = torch.rand(3, 3, 16, 16) + 0.5
    ctx = context("fakecam", model)
    out = ctx.method.explain(images)
    values = build_metric("adcc", ctx).update(metric_input(images, out))
    hw = 16 * 16
    torch.testing.assert_close(values["coherency"], torch.ones(3))  # the map of x * L is the same map
    torch.testing.assert_close(values["complexity"], torch.full((3,), (hw - 1) / hw))
    # O differs from Y only through pixel (0, 0) of channel 0: AD = (Y - O) / Y by hand
    y = torch.sigmoid(images[:, 0].mean((1, 2)))
    masked = images[:, 0].clone()
    masked[:, 0, 0] = 0
    o = torch.sigmoid(masked.mean((1, 2)))
    drop = (y - o) / y
    torch.testing.assert_close(values["average_drop"], drop)
    assert (values["average_drop"] < 0.01).all()
    expected = 3 / (1 + hw + 1 / (1 - drop))
    torch.testing.assert_close(values["adcc_per_image"], expected)
    assert (values["adcc_per_image"] < 3 / hw).all()  # ADCC exposes Fake-CAM: about 3 / (2 + HW)


def test_adcc_recomputes_the_map_on_the_explanation_input_for_the_same_class():
    model = MeanLogit().eval()
    images = torch.rand(2, 3, 8, 8)
    ctx = context("gradcam", model)
    out = ctx.method.explain(images, torch.tensor([0, 1]))
    values = build_metric("adcc", ctx).update(metric_input(images, out))
    again = ctx.method.explain(images * out.maps[:, None], torch.tensor([0, 1]))
    torch.testing.assert_close(values["coherency"], coherency(out.maps, again.maps))
    y = out.logits.softmax(1).gather(1, out.targets[:, None])[:, 0]
    o = again.logits.softmax(1).gather(1, out.targets[:, None])[:, 0]
    torch.testing.assert_close(values["average_drop"], ((y - o).clamp_min(0) / y))


def test_both_adcc_aggregations_and_their_intervals():
    rows = pd.DataFrame(
        {
            "coherency": [1.0, 0.5, 0.9],
            "complexity": [0.2, 0.6, 0.1],
            "average_drop": [0.0, 0.5, float("nan")],  # NaN: skipped in its column's mean
        }
    )
    rows["adcc_per_image"] = adcc(*(torch.tensor(rows[c].to_numpy()) for c in rows.columns)).numpy()
    summary = summarise(rows, list(rows.columns), resamples=500, derived={"adcc_of_means": adcc_of_means})
    summary = summary.set_index("metric")
    of_means = 3 / (1 / 0.8 + 1 / (1 - 0.3) + 1 / (1 - 0.25))
    assert summary.loc["adcc_of_means", "mean"] == pytest.approx(of_means)
    per_image = [3 / (1 + 1 / 0.8 + 1), 3 / (2 + 1 / 0.4 + 2)]
    assert summary.loc["adcc_per_image", "mean"] == pytest.approx(sum(per_image) / 2, rel=1e-6)
    assert summary.loc["adcc_per_image", "n"] == 2 and summary.loc["adcc_of_means", "n"] == 3
    assert summary.loc["coherency", "sd"] == pytest.approx(torch.tensor([1.0, 0.5, 0.9]).std().item())
    assert math.isnan(summary.loc["adcc_of_means", "sd"])
    low, high = summary.loc["adcc_of_means", ["ci95_low", "ci95_high"]]
    assert low < of_means < high


def test_average_drop_and_increase_agree_with_torchcam_on_the_same_maps():
    from torchcam.methods import GradCAM
    from torchcam.metrics import ClassificationMetric

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()  # fmt: skip
    images = torch.randn(6, 3, 16, 16)
    with GradCAM(model, target_layer="2") as extractor:  # the metric's maps: Grad-CAM of its softmax scores
        scores = model(images).softmax(-1)
        targets = scores.argmax(1)
        cam = extractor(targets.tolist(), scores)[0]
    maps = torch.nn.functional.interpolate(cam[:, None], (16, 16), mode="bilinear", align_corners=False)[:, 0]
    with torch.no_grad():
        logits = model(images)
    ours = build_metric("confidence", context_for(model))
    ours.update(metric_input(images, CAMOutput(maps, cam, logits, targets, Passes(forward=1))))
    with GradCAM(model, target_layer="2") as extractor:
        theirs = ClassificationMetric(extractor, partial(torch.softmax, dim=-1))
        theirs.update(images)
        summary = theirs.summary()
    means = ours.compute()
    assert abs(means["average_drop"].item() - summary["avg_drop"]) < 1e-6  # measured 3.7e-9 (TorchCAM: Y + 1e-7)
    assert means["increase_in_confidence"].item() == summary["conf_increase"]


def context_for(model: nn.Module) -> MetricContext:
    method = make_method("gradcam", model, "2")
    return MetricContext(method.engine, method)


def test_faithfulness_correlation_exact_on_a_linear_stub():
    from cambench.metrics.faithfulness_correlation import faithfulness_correlation, random_subsets

    model = MeanLogit().eval()
    ctx = context("gradcam", model)
    images = torch.rand(2, 3, 6, 6)
    subsets = random_subsets((2, 36), 20, 5, torch.Generator().manual_seed(0))
    assert subsets.shape == (2, 20, 5) and all(len(set(run.tolist())) == 5 for run in subsets.flatten(0, 1))
    clean = images[:, 0].mean((1, 2))  # the logit of class 0
    targets = torch.zeros(2, dtype=torch.long)
    # baseline 0: removing S drops the logit by sum_{i in S} x0_i / 36: a map equal to x0 correlates exactly
    zeros = torch.zeros_like(images)
    value = faithfulness_correlation(ctx.scorer, images, images[:, 0], targets, zeros, subsets, clean, "logit")
    torch.testing.assert_close(value, torch.ones(2))
    flipped = faithfulness_correlation(ctx.scorer, images, -images[:, 0], targets, zeros, subsets, clean, "logit")
    torch.testing.assert_close(flipped, -torch.ones(2))
    flat = faithfulness_correlation(ctx.scorer, images, torch.ones(2, 6, 6), targets, zeros, subsets, clean, "logit")
    assert flat.isnan().all()  # a constant map: every subset has the same mass, r undefined


def test_faithfulness_correlation_metric_is_seeded_and_checks_its_subset():
    model = MeanLogit().eval()
    images = torch.rand(2, 3, 6, 6)
    ctx = context("gradcam", model)
    out = ctx.method.explain(images)
    first = build_metric("faithfulness_correlation", ctx, runs=8, subset=4).update(metric_input(images, out))
    again = build_metric("faithfulness_correlation", ctx, runs=8, subset=4).update(metric_input(images, out))
    torch.testing.assert_close(first["faithfulness_correlation"], again["faithfulness_correlation"])
    with pytest.raises(MetricError, match="subset=40 is more than the 36 pixels"):
        build_metric("faithfulness_correlation", ctx, runs=8, subset=40).update(metric_input(images, out))
    with pytest.raises(MetricError, match="baseline must be one of black, zeros, mean, uniform"):
        build_metric("faithfulness_correlation", ctx, baseline="grey")


def test_infidelity_by_hand_and_as_captum_computes_it_with_the_same_perturbations():
    from captum.metrics import infidelity as captum_infidelity

    from cambench.metrics.infidelity import infidelity

    model = MeanLogit().eval()
    ctx = context("gradcam", model)
    images, maps = torch.rand(2, 3, 4, 4), torch.rand(2, 4, 4)
    noise = 0.2 * torch.randn(2, 5, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    targets = torch.zeros(2, dtype=torch.long)
    clean = images[:, 0].mean((1, 2))
    ours = infidelity(ctx.scorer, images, maps, targets, noise, clean, "logit")
    # by hand: the logit drops by mean(I_0); the map explains sum_hw L (I_0 + I_1 + I_2)
    explained = (maps[:, None] * noise.sum(2)).sum((2, 3))
    expected = ((explained - noise[:, :, 0].mean((2, 3))) ** 2).mean(1)
    torch.testing.assert_close(ours, expected)
    flat = noise.flatten(0, 1)  # Captum repeats each input N times, image-major, as our rows

    def perturb(inputs):
        return flat, inputs - flat

    theirs = captum_infidelity(
        model, perturb, images, maps[:, None].expand(-1, 3, -1, -1), n_perturb_samples=5, target=0
    )
    torch.testing.assert_close(ours, theirs.float(), rtol=1e-5, atol=1e-7)
