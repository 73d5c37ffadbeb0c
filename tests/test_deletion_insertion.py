"""Deletion / insertion: exact values on a stub model whose target probability is known in closed
form, RISE's blur kernel against scipy called as the official code calls it, exact step counts,
seeded tie-breaks, and chunking that cannot change a value."""

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate, gaussian_filter
from torch import nn

from cambench.data.blur import gaussian_blur, rise_kernel
from cambench.data.preprocessing import Preprocessing
from cambench.metrics import MetricContext, MetricError, MetricInput, build_metric
from cambench.metrics.deletion_insertion import (
    auc,
    deletion_insertion,
    perturbation_curve,
    pixel_ranks,
    step_counts,
)
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
    curve = perturbation_curve(scorer(), IMAGE, torch.zeros_like(IMAGE), ranks(), torch.tensor([1]), steps=4)
    # mean after removing the top 0..4 pixels: 1.0/4, 0.6/4, 0.3/4, 0.1/4, 0
    torch.testing.assert_close(curve, torch.tensor([[0.25, 0.15, 0.075, 0.025, 0.0]]))
    # trapezoid on [0, 1]: (0.5 - 0.25/2 - 0/2) / 4
    torch.testing.assert_close(auc(curve), torch.tensor([0.09375]))


def test_insertion_like_curve_from_zeros_exact():
    curve = perturbation_curve(scorer(), torch.zeros_like(IMAGE), IMAGE, ranks(), torch.tensor([1]), steps=4)
    torch.testing.assert_close(curve, torch.tensor([[0.0, 0.1, 0.175, 0.225, 0.25]]))
    torch.testing.assert_close(auc(curve), torch.tensor([0.15625]))


def test_steps_not_dividing_the_pixel_count_move_the_rounded_share():
    # 4 pixels, 3 steps: round(4 i / 3) = 0, 1, 3, 4 pixels removed
    curve = perturbation_curve(scorer(), IMAGE, torch.zeros_like(IMAGE), ranks(), torch.tensor([1]), steps=3)
    torch.testing.assert_close(curve, torch.tensor([[0.25, 0.15, 0.025, 0.0]]))


@pytest.mark.parametrize("batch_size", [1, 3, None])
def test_targets_are_per_image_and_chunking_does_not_change_values(batch_size):
    images = torch.cat([IMAGE, 1 - IMAGE])  # second image: p(1) = 0.75, explained for class 0
    saliency = torch.cat([SALIENCY, -SALIENCY])  # second: remove the low-valued pixels first
    targets = torch.tensor([1, 0])
    out = deletion_insertion(scorer(batch_size), images, saliency, targets, steps=4, blur_kernel=1)
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
    value = deletion_insertion(scorer(), images, saliency, torch.tensor([1]), steps=2, blur_kernel=11, blur_sigma=5.0)
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
    return MetricInput(IMAGE, torch.tensor([1]), None, ["a"], out)


def test_metric_class_accumulates_means_and_validates_parameters():
    metric = build_metric("deletion_insertion", context(), steps=4, blur_kernel=1)
    metric.update(batch(SALIENCY))
    metric.update(batch(-SALIENCY))
    # reversed ranking: removes 0.1, 0.2, 0.3, 0.4 -> 0.25, 0.225, 0.175, 0.1, 0 -> AUC 0.15625
    torch.testing.assert_close(metric.compute()["deletion"], torch.tensor((0.09375 + 0.15625) / 2))
    with pytest.raises(MetricError, match="steps must be >= 1"):
        build_metric("deletion_insertion", context(), steps=0)
    with pytest.raises(MetricError, match="odd blur_kernel"):
        build_metric("deletion_insertion", context(), blur_kernel=10)
    with pytest.raises(KeyError, match="valid choices"):
        build_metric("nosuch", context())


def test_the_metrics_random_tie_breaks_are_seeded_by_the_run():
    flat = torch.zeros(1, 2, 2)  # all ties: the order is the generator's
    first = build_metric("deletion_insertion", context(), steps=4, blur_kernel=1).update(batch(flat))
    again = build_metric("deletion_insertion", context(), steps=4, blur_kernel=1).update(batch(flat))
    torch.testing.assert_close(first["deletion"], again["deletion"])
