"""Deletion / insertion: exact values on a stub model whose target probability is known in closed
form, RISE's blur kernel against scipy called as the official code calls it, exact step counts,
seeded tie-breaks, chunking that cannot change a value, the substrates, both orderings, and the
``rise`` and ``poppi`` presets against their protocols computed step by step."""

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate, gaussian_filter
from torch import nn

from cambench.data.blur import gaussian_blur, rise_kernel
from cambench.data.preprocessing import Preprocessing
from cambench.metrics import MetricContext, MetricError, MetricInput, build_metric
from cambench.metrics.deletion_insertion import (
    areas,
    auc,
    curve_points,
    deletion_insertion_curves,
    perturbation_curve,
    pixel_ranks,
    step_counts,
)
from cambench.metrics.substrates import substrate
from cambench.models.engine import Engine, Passes
from cambench.models.scorer import Scorer
from cambench.models.split import split_model


class MeanPixel(nn.Module):
    """Two classes with p(1 | x) = mean of the pixels of x (images in [0, 1]) and p(0 | x) = 1 - that."""

    def forward(self, x):
        p = x.mean((1, 2, 3)).clamp(1e-12, 1 - 1e-12)
        return torch.stack([torch.log1p(-p), torch.log(p)], 1)


IMAGE = torch.tensor([[[[0.4, 0.3], [0.2, 0.1]]]])  # p(1) = 0.25
SALIENCY = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])  # ranks pixels in value order


def scorer(batch_size=None):
    return Scorer(split_model(MeanPixel(), []), batch_size)


def ranks(saliency=SALIENCY, seed=0):
    return pixel_ranks(saliency, torch.Generator().manual_seed(seed))


def rise_like(scorer, images, saliency, targets, steps, blur_kernel=11, blur_sigma=5.0, lerf=False):
    """RISE's substrates (zeros, blur) at ``steps`` steps, through the functional pieces."""
    blurred = substrate("blur", images, Preprocessing(), blur_kernel=blur_kernel, blur_sigma=blur_sigma)
    counts, intervals = curve_points(images.shape[-2] * images.shape[-1], steps, None, True)
    curves = deletion_insertion_curves(
        scorer, images, ranks(saliency), targets, torch.zeros_like(images), blurred, counts, "probability", lerf
    )
    return areas(curves, intervals)


def test_ties_are_broken_in_a_seeded_random_order_and_distinct_values_keep_theirs():
    saliency = torch.zeros(1, 16, 16)
    saliency[0, 8:, :] = 1.0  # the bottom half first, then the top half, each in random order
    r = ranks(saliency, seed=0)[0].view(16, 16)
    assert r[8:].max() < 128 <= r[:8].min()
    assert torch.equal(r, ranks(saliency, seed=0)[0].view(16, 16))
    assert not torch.equal(r, ranks(saliency, seed=1)[0].view(16, 16))
    raster = torch.arange(128).view(8, 16)
    assert not torch.equal(r[8:], raster), "ties must not fall back to raster order"


def test_step_counts_round_to_the_exact_fraction():
    assert step_counts(4, 3).tolist() == [0, 1, 3, 4]  # 4/3 -> 1, 8/3 -> 3
    assert step_counts(50176, 224).tolist()[:3] == [0, 224, 448]
    assert step_counts(10, 4).tolist() == [0, 3, 5, 8, 10]  # 2.5 and 7.5 round up


def test_deletion_curve_and_auc_exact():
    curve = perturbation_curve(
        scorer(), IMAGE, torch.zeros_like(IMAGE), ranks(), torch.tensor([1]), step_counts(4, 4), "probability"
    )
    # mean after removing the top 0..4 pixels: 1.0/4, 0.6/4, 0.3/4, 0.1/4, 0
    torch.testing.assert_close(curve, torch.tensor([[0.25, 0.15, 0.075, 0.025, 0.0]]))
    # trapezoid on [0, 1]: (0.5 - 0.25/2 - 0/2) / 4
    torch.testing.assert_close(auc(curve), torch.tensor([0.09375]))


def test_insertion_like_curve_from_zeros_exact():
    curve = perturbation_curve(
        scorer(), torch.zeros_like(IMAGE), IMAGE, ranks(), torch.tensor([1]), step_counts(4, 4), "probability"
    )
    torch.testing.assert_close(curve, torch.tensor([[0.0, 0.1, 0.175, 0.225, 0.25]]))
    torch.testing.assert_close(auc(curve), torch.tensor([0.15625]))


def test_steps_not_dividing_the_pixel_count_move_the_rounded_share():
    # 4 pixels, 3 steps: round(4 i / 3) = 0, 1, 3, 4 pixels removed
    curve = perturbation_curve(
        scorer(), IMAGE, torch.zeros_like(IMAGE), ranks(), torch.tensor([1]), step_counts(4, 3), "probability"
    )
    torch.testing.assert_close(curve, torch.tensor([[0.25, 0.15, 0.025, 0.0]]))


@pytest.mark.parametrize("batch_size", [1, 3, None])
def test_targets_are_per_image_and_chunking_does_not_change_values(batch_size):
    images = torch.cat([IMAGE, 1 - IMAGE])  # second image: p(1) = 0.75, explained for class 0
    saliency = torch.cat([SALIENCY, -SALIENCY])  # second: remove the low-valued pixels first
    targets = torch.tensor([1, 0])
    out = rise_like(scorer(batch_size), images, saliency, targets, steps=4, blur_kernel=1)
    # image 2 = 1 - image 1 = 0.6 0.7 0.8 0.9; -saliency removes the last pixel (0.9) first.
    # p(0) = 1 - mean: 0.25, 0.475, 0.675, 0.85, 1.0 -> (3.25 - 0.125 - 0.5) / 4
    torch.testing.assert_close(out["deletion"], torch.tensor([0.09375, 0.65625]))
    # a 1-pixel blur is the identity: insertion's curve is flat at the clean probability
    torch.testing.assert_close(out["insertion"], torch.tensor([0.25, 0.25]))


def test_rise_kernel_is_scipys_gaussian_filter_of_a_delta_as_the_official_code_calls_it():
    for size, sigma in [(11, 5.0), (51, 50.0), (7, 1.5)]:
        delta = np.zeros((size, size))
        delta[size // 2, size // 2] = 1
        official = gaussian_filter(delta, sigma)  # eclique/RISE: gkern(klen, nsig)
        np.testing.assert_allclose(rise_kernel(size, sigma).numpy(), official, rtol=0, atol=1e-15)
    assert abs(rise_kernel(11, 5.0)[5, 5].item() - 0.0088326) < 1e-6  # flatter than a sampled Gaussian (0.0120)


def test_gaussian_blur_is_a_zero_padded_correlation_with_the_rise_kernel():
    images = torch.rand(2, 3, 20, 24, dtype=torch.float64)
    kernel = rise_kernel(11, 5.0).numpy()
    expected = np.stack(
        [np.stack([correlate(ch, kernel, mode="constant") for ch in image]) for image in images.numpy()]
    )
    torch.testing.assert_close(gaussian_blur(images, 11, 5.0), torch.from_numpy(expected))


def test_insertion_starts_from_the_blurred_image():
    images = torch.ones(1, 1, 12, 12)
    saliency = torch.arange(144.0).flip(0).view(1, 12, 12)  # top rows first, no ties
    value = rise_like(scorer(), images, saliency, torch.tensor([1]), steps=2, blur_kernel=11, blur_sigma=5.0)
    blurred = gaussian_blur(images, 11, 5.0)[0, 0]
    # points: all blurred (the zero-padded border darkens it), top half replaced by ones, all ones
    half = torch.cat([torch.ones(72), blurred.flatten()[72:]]).mean()
    expected = (blurred.mean() / 2 + half + 1 / 2) / 2
    torch.testing.assert_close(value["insertion"], expected.view(1))


def context(batch_size=None):
    split = split_model(MeanPixel(), [])
    return MetricContext(Engine(split, Scorer(split, batch_size), Preprocessing()), method=None)


def batch(saliency):
    from cambench.methods import CAMOutput

    out = CAMOutput(saliency, saliency, torch.zeros(1, 2), torch.tensor([1]), Passes(forward=1))
    return MetricInput.of(out, IMAGE, ["a"], labels=torch.tensor([1]))


def test_metric_class_accumulates_means_and_validates_parameters():
    metric = build_metric("deletion_insertion", context(), steps=4, blur_kernel=1)
    metric.update(batch(SALIENCY))
    metric.update(batch(-SALIENCY))
    # reversed ranking: removes 0.1, 0.2, 0.3, 0.4 -> 0.25, 0.225, 0.175, 0.1, 0 -> AUC 0.15625
    torch.testing.assert_close(metric.compute()["deletion"], torch.tensor((0.09375 + 0.15625) / 2))
    with pytest.raises(MetricError, match="steps and pixels_per_step must be >= 1"):
        build_metric("deletion_insertion", context(), steps=0)
    with pytest.raises(MetricError, match="odd blur_kernel"):
        build_metric("deletion_insertion", context(), blur_kernel=10)
    with pytest.raises(MetricError, match="valid choices"):
        build_metric("nosuch", context())


def test_the_metrics_random_tie_breaks_are_seeded_by_the_run():
    flat = torch.zeros(1, 2, 2)  # all ties: the order is the generator's
    first = build_metric("deletion_insertion", context(), steps=4, blur_kernel=1).update(batch(flat))
    again = build_metric("deletion_insertion", context(), steps=4, blur_kernel=1).update(batch(flat))
    torch.testing.assert_close(first["deletion"], again["deletion"])


def test_curve_points_by_steps_by_pixels_per_step_and_without_the_final_point():
    # RISE's code: ceil(1024 / 224) = 5 steps, the last short (steps is not used with pixels_per_step)
    counts, n = curve_points(1024, 1, pixels_per_step=224, final_point=True)
    assert counts.tolist() == [0, 224, 448, 672, 896, 1024] and n == 5
    counts, n = curve_points(100, steps=100, pixels_per_step=None, final_point=False)  # Poppi: 0%, 1%, ..., 99%
    assert counts.tolist() == list(range(100)) and n == 100
    assert curve_points(4, steps=3, pixels_per_step=None, final_point=True)[0].tolist() == [0, 1, 3, 4]
    # without the final point the area ends at x = (n - 1) / n: (0.25 + 0.15 + 0.075 + 0.025 - 0.125 - 0.0125) / 4
    torch.testing.assert_close(auc(torch.tensor([[0.25, 0.15, 0.075, 0.025]]), 4), torch.tensor([0.090625]))


def test_least_relevant_first_curves_and_the_areas_between():
    out = rise_like(scorer(), IMAGE, SALIENCY, torch.tensor([1]), steps=4, blur_kernel=1, lerf=True)
    # deletion removing 0.1, 0.2, 0.3, 0.4: 0.25, 0.225, 0.175, 0.1, 0 -> 0.15625; MoRF 0.09375
    torch.testing.assert_close(out["deletion_lerf"], torch.tensor([0.15625]))
    torch.testing.assert_close(out["deletion_between"], torch.tensor([0.0625]))
    # a 1-pixel blur is the identity: both insertion curves are flat at 0.25
    torch.testing.assert_close(out["insertion_lerf"], torch.tensor([0.25]))
    torch.testing.assert_close(out["insertion_between"], torch.tensor([0.0]))


def test_substrates_exact():
    images = torch.rand(2, 3, 6, 5)
    pre = Preprocessing(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    assert torch.equal(substrate("zeros", images, pre), torch.zeros_like(images))
    black = substrate("black", images, pre)
    torch.testing.assert_close(black[1, :, 3, 2], torch.tensor([-2.5, -1.6, -0.6]))
    torch.testing.assert_close(substrate("mean", images, pre)[1, :, 0, 0], images[1].mean((1, 2)))
    torch.testing.assert_close(
        substrate("blur", images, pre, blur_kernel=3, blur_sigma=1.0), gaussian_blur(images, 3, 1.0)
    )
    noise = substrate("uniform", images, pre, torch.Generator().manual_seed(3))
    again = torch.rand(images.shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(pre.to_pixels(noise), again)
    with pytest.raises(ValueError, match="valid choices: zeros, black, mean, blur, uniform"):
        substrate("grey", images, pre)


class TinyNet(nn.Module):
    """A fixed random conv net with 5 classes (softmax outputs vary with every pixel)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).mean((2, 3)) * 4)


def metric_run(model, images, maps, preset):
    """The metric at a preset's parameters, on the model's predicted classes."""
    split = split_model(model, [])
    ctx = MetricContext(Engine(split, Scorer(split, None), Preprocessing()), method=None)
    from cambench.methods import CAMOutput

    logits = model(images)
    out = CAMOutput(maps, maps, logits, logits.argmax(1), Passes(forward=1))
    metric = build_metric("deletion_insertion", ctx, **preset)
    return metric.update(MetricInput.of(out, images, ["a"] * len(images), labels=logits.argmax(1))), metric


def preset(name):
    import yaml

    path = __import__("pathlib").Path(__file__).resolve().parent.parent / "conf" / "metrics" / f"{name}.yaml"
    return yaml.safe_load(path.read_text())["deletion_insertion"]


@torch.no_grad()
def test_rise_preset_is_the_official_loop_step_by_step():
    """eclique/RISE's CausalMetric.single_run, written out: 224 pixels a step, zeros / gkern(11, 5) blur."""
    model, images = TinyNet().eval(), torch.randn(2, 3, 32, 32)
    maps = torch.rand(2, 32, 32)  # distinct values: one order, as np.argsort gives it
    ours, _ = metric_run(model, images, maps, preset("rise"))
    delta = np.zeros((11, 11))
    delta[5, 5] = 1
    kernel = torch.zeros(3, 3, 11, 11)
    for c in range(3):
        kernel[c, c] = torch.from_numpy(gaussian_filter(delta, 5))

    def single_run(img, explanation, mode):
        hw, step = 32 * 32, 224
        n_steps = (hw + step - 1) // step
        c = model(img).argmax(1).item()
        blurred = torch.nn.functional.conv2d(img, kernel, padding=5)
        start, finish = (img.clone(), torch.zeros_like(img)) if mode == "del" else (blurred, img.clone())
        scores = np.empty(n_steps + 1)
        order = np.flip(np.argsort(explanation.reshape(-1, hw).numpy(), axis=1), axis=-1)
        for i in range(n_steps + 1):
            scores[i] = model(start).softmax(1)[0, c].item()
            if i < n_steps:
                coords = order[:, step * i : step * (i + 1)]
                start.numpy().reshape(1, 3, hw)[0, :, coords] = finish.numpy().reshape(1, 3, hw)[0, :, coords]
        return (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (scores.shape[0] - 1)

    for b in range(2):
        for name, mode in (("deletion", "del"), ("insertion", "ins")):
            expected = single_run(images[b : b + 1], maps[b], mode)
            assert ours[name][b].item() == pytest.approx(expected, abs=1e-6)


@torch.no_grad()
def test_poppi_preset_is_one_percent_steps_to_black_with_sklearns_auc():
    """1% of the pixels a step (one pixel at 10 x 10), black for both curves, sklearn.metrics.auc on
    arange(0, 1, 0.01): points 0% .. 99%."""
    from sklearn.metrics import auc as sklearn_auc

    model, pixels = TinyNet().eval(), torch.rand(2, 3, 10, 10)
    images = Preprocessing().from_pixels(pixels)
    maps = torch.rand(2, 10, 10)
    ours, metric = metric_run(model, images, maps, preset("poppi"))
    black = Preprocessing().from_pixels(torch.zeros(1, 3, 10, 10))
    for b in range(2):
        c = model(images[b : b + 1]).argmax(1).item()
        order = maps[b].flatten().argsort(descending=True)
        deletion, insertion = images[b : b + 1].clone(), black.clone()
        del_scores, ins_scores = [], []
        for i in range(100):
            del_scores.append(model(deletion).softmax(1)[0, c].item())
            ins_scores.append(model(insertion).softmax(1)[0, c].item())
            row, col = divmod(order[i].item(), 10)
            deletion[0, :, row, col] = black[0, :, row, col]
            insertion[0, :, row, col] = images[b, :, row, col]
        x = np.arange(0, 1, 0.01)
        assert ours["deletion"][b].item() == pytest.approx(sklearn_auc(x, del_scores), abs=1e-6)
        assert ours["insertion"][b].item() == pytest.approx(sklearn_auc(x, ins_scores), abs=1e-6)
    x, mean_deletion = metric.curves()["deletion"]
    assert x.tolist() == pytest.approx(np.arange(0, 1, 0.01).tolist()) and len(mean_deletion) == 100


def test_logit_output_and_mean_curves_over_batches():
    metric = build_metric("deletion_insertion", context(), steps=4, blur_kernel=1, output="logit")
    value = metric.update(batch(SALIENCY))
    # log of the mean after removing 0..3 pixels, then log(1e-12) (the stub clamps p)
    curve = torch.log(torch.tensor([0.25, 0.15, 0.075, 0.025, 1e-12]))
    torch.testing.assert_close(value["deletion"], auc(curve[None]))
    metric = build_metric("deletion_insertion", context(), steps=4, blur_kernel=1)
    metric.update(batch(SALIENCY))
    metric.update(batch(-SALIENCY))
    x, mean = metric.curves()["deletion"]
    torch.testing.assert_close(x, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    torch.testing.assert_close(
        mean, torch.tensor([0.25, (0.15 + 0.225) / 2, (0.075 + 0.175) / 2, (0.025 + 0.1) / 2, 0.0])
    )


def test_lerf_adds_its_columns_and_bad_options_are_named():
    from cambench.metrics.deletion_insertion import DeletionInsertion

    assert DeletionInsertion.columns(DeletionInsertion.Params()) == ("deletion", "insertion")
    metric = build_metric("deletion_insertion", context(), steps=2, blur_kernel=1, lerf=True)
    assert (
        set(metric.update(batch(SALIENCY)))
        == set(metric.names)
        == set(DeletionInsertion.columns(DeletionInsertion.Params(lerf=True)))
    )
    with pytest.raises(MetricError, match="deletion_substrate must be one of zeros, black, mean, blur, uniform"):
        build_metric("deletion_insertion", context(), deletion_substrate="grey")
    with pytest.raises(MetricError, match="output must be one of"):
        build_metric("deletion_insertion", context(), output="odds")
    with pytest.raises(MetricError, match="needs at least 2 steps"):
        build_metric("deletion_insertion", context(), steps=1, final_point=False).update(batch(SALIENCY))
