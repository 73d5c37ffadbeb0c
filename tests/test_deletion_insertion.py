"""Deletion / insertion: exact values on a stub model whose target probability is known in closed form."""

import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from cambench.metrics import MetricInput, Scorer, build_metric
from cambench.metrics.deletion_insertion import auc, deletion_insertion, gaussian_blur, perturbation_curve, pixel_ranks


class MeanPixel(nn.Module):
    """Two classes with p(1 | x) = mean of the pixels of x (images in [0, 1]) and p(0 | x) = 1 - that."""

    def forward(self, x):
        p = x.mean((1, 2, 3)).clamp(1e-12, 1 - 1e-12)
        return torch.stack([torch.log1p(-p), torch.log(p)], 1)


IMAGE = torch.tensor([[[[0.4, 0.3], [0.2, 0.1]]]])  # p(1) = 0.25
SALIENCY = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]])  # ranks pixels in value order


def scorer(batch_size=256):
    return Scorer(MeanPixel(), batch_size)


def test_pixel_ranks_descending_with_stable_ties():
    ranks = pixel_ranks(torch.tensor([[[1.0, 3.0], [3.0, 0.0]]]))
    assert ranks.tolist() == [[2, 0, 1, 3]]


def test_deletion_curve_and_auc_exact():
    curve = perturbation_curve(scorer(), IMAGE, torch.zeros_like(IMAGE), SALIENCY, torch.tensor([1]), steps=4)
    # mean after removing the top 0..4 pixels: 1.0/4, 0.6/4, 0.3/4, 0.1/4, 0
    torch.testing.assert_close(curve, torch.tensor([[0.25, 0.15, 0.075, 0.025, 0.0]]))
    # trapezoid on [0, 1]: (0.5 - 0.25/2 - 0/2) / 4
    torch.testing.assert_close(auc(curve), torch.tensor([0.09375]))


def test_insertion_like_curve_from_zeros_exact():
    curve = perturbation_curve(scorer(), torch.zeros_like(IMAGE), IMAGE, SALIENCY, torch.tensor([1]), steps=4)
    torch.testing.assert_close(curve, torch.tensor([[0.0, 0.1, 0.175, 0.225, 0.25]]))
    torch.testing.assert_close(auc(curve), torch.tensor([0.15625]))


def test_steps_not_dividing_the_pixel_count_clip_at_the_end():
    # 4 pixels, 3 steps: ceil(4 / 3) = 2 pixels a step -> 0, 2, 4, 4 pixels removed
    curve = perturbation_curve(scorer(), IMAGE, torch.zeros_like(IMAGE), SALIENCY, torch.tensor([1]), steps=3)
    torch.testing.assert_close(curve, torch.tensor([[0.25, 0.075, 0.0, 0.0]]))


def test_targets_are_per_image_and_forward_chunking_does_not_change_values():
    images = torch.cat([IMAGE, 1 - IMAGE])  # second image: p(1) = 0.75, explained for class 0
    saliency = torch.cat([SALIENCY, -SALIENCY])  # second: remove the low-valued pixels first
    targets = torch.tensor([1, 0])
    full = deletion_insertion(scorer(), images, saliency, targets, steps=4, blur_kernel=1)
    chunked = deletion_insertion(scorer(batch_size=3), images, saliency, targets, steps=4, blur_kernel=1)
    torch.testing.assert_close(full["deletion"], chunked["deletion"])
    # image 2 = 1 - image 1 = 0.6 0.7 0.8 0.9; -saliency removes the last pixel (0.9) first.
    # p(0) = 1 - mean: 0.25, 0.475, 0.675, 0.85, 1.0 -> (3.25 - 0.125 - 0.5) / 4
    torch.testing.assert_close(full["deletion"], torch.tensor([0.09375, 0.65625]))
    # a 1-pixel blur is the identity: insertion's curve is flat at the clean probability
    torch.testing.assert_close(full["insertion"], torch.tensor([0.25, 0.25]))


def test_gaussian_blur_matches_scipy_with_zero_padding():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 20, 24, dtype=torch.float64)
    ours = gaussian_blur(images, kernel_size=11, sigma=5.0)
    # RISE's substrate: kernel 11 = truncate at 1 sigma of 5, zero ("constant") padding
    theirs = gaussian_filter(images.numpy(), sigma=(0, 0, 5.0, 5.0), truncate=1.0, mode="constant")
    torch.testing.assert_close(ours, torch.from_numpy(theirs))


def test_insertion_starts_from_the_blurred_image():
    images = torch.ones(1, 1, 12, 12)
    saliency = torch.arange(144.0).view(1, 12, 12)
    value = deletion_insertion(scorer(), images, saliency, torch.tensor([1]), steps=2, blur_kernel=11, blur_sigma=5.0)
    blurred_mean = gaussian_blur(images, 11, 5.0).mean()
    # curve points: blurred (zero-padded border darkens it), half replaced by ones, all ones
    first_half = gaussian_blur(images, 11, 5.0)[0, 0].flatten()[:72].mean()  # rows 0-5 stay blurred
    expected = (blurred_mean + 1) / 4 + (first_half + 1) / 4
    torch.testing.assert_close(value["insertion"], expected.view(1))


def test_metric_class_accumulates_means_and_validates_steps():
    metric = build_metric("deletion_insertion", steps=4, blur_kernel=1)
    batch = MetricInput(IMAGE, SALIENCY, torch.tensor([1]), torch.tensor([1]), None, scorer())
    metric.update(batch)
    metric.update(MetricInput(IMAGE, -SALIENCY, torch.tensor([1]), torch.tensor([1]), None, scorer()))
    # reversed ranking: removes 0.1, 0.2, 0.3, 0.4 -> 0.25, 0.225, 0.175, 0.1, 0 -> AUC 0.15625
    torch.testing.assert_close(metric.compute()["deletion"], torch.tensor((0.09375 + 0.15625) / 2))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        build_metric("deletion_insertion", steps=0)
    with pytest.raises(KeyError, match="valid choices"):
        build_metric("nosuch")
