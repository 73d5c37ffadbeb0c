"""The sanity baselines: Fake-CAM, Dummy-CAM, Random-CAM, Center-CAM, Edge-CAM and Noise-CAM, each
against its formula computed by hand (or with an independent library, cv2), their seeding, their
independence of the model where they claim it, and their declared cost (one forward pass)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from conftest import make_method
from torch import Tensor, nn

from cambench.methods import MethodError
from cambench.models.engine import Passes

LUMA = (0.299, 0.587, 0.114)


class Stub(nn.Module):
    """stem (``stride`` x ``stride`` patches) -> features (1 x 1 conv, the target) -> GAP -> fc."""

    def __init__(self, seed: int = 0, stride: int = 8, channels: int = 4):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.stem = nn.Conv2d(3, channels, stride, stride=stride)
        self.features = nn.Conv2d(channels, channels, 1)
        self.fc = nn.Linear(channels, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(self.stem(x)).mean((2, 3)))


def capture(model: nn.Module, layer: str, images: Tensor) -> Tensor:
    store = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    return store[-1]


def images_(n: int = 2, h: int = 64, w: int = 64, seed: int = 1) -> Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fakecam", "dummycam", "randomcam", "centercam", "edgecam", "noisecam"])
def test_baselines_declare_one_forward_pass(name):
    out = make_method(name, Stub(), "features")(images_(1))
    assert out.passes == Passes(forward=1)
    assert out.maps.shape == (1, 64, 64) and out.maps.min() >= 0 and out.maps.max() <= 1


def test_fakecam_is_ones_but_one_pixel_at_input_resolution():
    """Poppi's Fake-CAM: the single zero at (0, 0) of the *input* grid; the 8 x 8 feature map of the
    stub plays no part (no upsampled ramp around the corner)."""
    x = images_(2, 48, 64)
    out = make_method("fakecam", Stub(), "features")(x)
    assert out.raw.shape == out.maps.shape == (2, 48, 64)
    assert (out.maps[:, 0, 0] == 0).all()
    assert ((out.maps == 1).sum((1, 2)) == 48 * 64 - 1).all()
    assert (out.maps.sum((1, 2)) == 48 * 64 - 1).all()


def test_dummycam_is_the_channel_mean_of_the_activations():
    """features = 1 x 1 conv with weights [[1, 0, 0], [0, 1, -1]], biases [0, 1] on the input itself:
    A_0 = x_0, A_1 = x_1 - x_2 + 1, so L = (x_0 + x_1 - x_2 + 1) / 2 at input resolution."""
    model = nn.Sequential()
    model.features = nn.Conv2d(3, 2, 1)
    model.pool = nn.AdaptiveAvgPool2d(1)
    model.flat = nn.Flatten()
    model.fc = nn.Linear(2, 3)
    with torch.no_grad():
        model.features.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, -1.0]]).view(2, 3, 1, 1))
        model.features.bias.copy_(torch.tensor([0.0, 1.0]))
    x = images_(2, 16, 16)
    out = make_method("dummycam", model, "features")(x)
    expected = (x[:, 0] + x[:, 1] - x[:, 2] + 1) / 2
    assert (out.raw - expected).abs().max() < 1e-5
    relu = expected.clamp_min(0)
    lo, hi = relu.amin((1, 2), keepdim=True), relu.amax((1, 2), keepdim=True)
    assert (out.maps - (relu - lo) / (hi - lo)).abs().max() < 1e-5
    # and on a downsampling stub: the mean of the 8 x 8 activations over its 4 channels
    stub = Stub()
    out = make_method("dummycam", stub, "features")(x.repeat(1, 1, 4, 4))
    assert (out.raw - capture(stub, "features", x.repeat(1, 1, 4, 4)).mean(1)).abs().max() < 1e-5


def test_randomcam_weights_are_seeded_uniform_minus_one_to_one():
    """w = 2 U(0, 1) - 1 per image and channel, drawn from the method's generator (seeded with the
    run's seed, advancing from batch to batch): the raw map is sum_k w_k A_k with those draws."""
    stub, x = Stub(channels=6), images_(2)
    acts = capture(stub, "features", x)
    method = make_method("randomcam", stub, "features", seed=5)
    first, second = method(x).raw, method(x).raw
    g = torch.Generator().manual_seed(5)
    w1, w2 = torch.rand(2, 6, generator=g) * 2 - 1, torch.rand(2, 6, generator=g) * 2 - 1
    assert (first - torch.einsum("bk,bkhw->bhw", w1, acts)).abs().max() < 1e-5
    assert (second - torch.einsum("bk,bkhw->bhw", w2, acts)).abs().max() < 1e-5
    # the weights, recovered by least squares from the raw map (64 positions, 6 channels), are those draws
    recovered = torch.linalg.lstsq(acts[0].flatten(1).T, first[0].flatten()[:, None]).solution[:, 0]
    assert (recovered - w1[0]).abs().max() < 1e-4 and recovered.abs().max() < 1
    assert (first - second).abs().max() > 0.1  # successive batches differ
    same = make_method("randomcam", stub, "features", seed=5)(x).raw
    other = make_method("randomcam", stub, "features", seed=6)(x).raw
    assert torch.equal(same, first)
    assert (other - first).abs().max() > 0.1


def test_centercam_gaussian_values_and_sigma():
    """L(y, x) = exp(-((x - x0)^2 + (y - y0)^2) / (2 (sigma min(H, W))^2)), centre ((H-1)/2, (W-1)/2)."""
    x = images_(1, 65, 65)
    raw = make_method("centercam", Stub(), "features")(x).raw[0]
    assert raw.shape == (65, 65)
    assert raw[32, 32] == 1 and raw.max() == 1
    s = 0.25 * 65
    assert abs(raw[32, 40].item() - math.exp(-64 / (2 * s**2))) < 1e-6
    assert abs(raw[22, 37].item() - math.exp(-(100 + 25) / (2 * s**2))) < 1e-6
    assert abs(raw[0, 0].item() - math.exp(-(2 * 32**2) / (2 * s**2))) < 1e-6
    torch.testing.assert_close(raw, raw.T)
    narrow = make_method("centercam", Stub(), "features", sigma=0.1)(x).raw[0]
    assert abs(narrow[32, 40].item() - math.exp(-64 / (2 * 6.5**2))) < 1e-6
    # non-square: the shorter side sets the scale; an even side puts the centre between two pixels
    rect = make_method("centercam", Stub(), "features")(images_(1, 33, 64)).raw[0]
    s = 0.25 * 33
    assert abs(rect[16, 31].item() - math.exp(-(0.5**2) / (2 * s**2))) < 1e-6
    assert abs(rect[16, 0].item() - math.exp(-(31.5**2) / (2 * s**2))) < 1e-6
    with pytest.raises(MethodError, match="sigma"):
        make_method("centercam", Stub(), "features", sigma=0.0)


def _as_input(method, pixels: Tensor) -> Tensor:
    return method.engine.preprocessing.from_pixels(pixels)


def test_edgecam_sobel_magnitude_by_hand():
    """A vertical step (columns 0-3 black, 4-7 white) has S_x = 4 on the two columns beside the
    step and 0 elsewhere (reflected borders add no edge), S_y = 0; the same step in red alone is
    scaled by the luma weight 0.299; a horizontal step is the transpose."""
    method = make_method("edgecam", Stub(stride=1), "features")
    pixels = torch.zeros(3, 3, 8, 8)
    pixels[0, :, :, 4:] = 1  # white
    pixels[1, 0, :, 4:] = 1  # red only
    pixels[2, :, 4:, :] = 1  # white, horizontal
    out = method(_as_input(method, pixels))
    column = torch.tensor([0, 0, 0, 4.0, 4.0, 0, 0, 0])
    assert (out.raw[0] - column.expand(8, 8)).abs().max() < 1e-5
    assert (out.raw[1] - LUMA[0] * column.expand(8, 8)).abs().max() < 1e-5
    assert (out.raw[2] - column[:, None].expand(8, 8)).abs().max() < 1e-5
    assert (out.maps[0] - column.expand(8, 8) / 4).abs().max() < 1e-6
    # a corner (white lower-right quadrant): at (3, 3) S_x = S_y = 1 (one white neighbour), so |G| = sqrt(2)
    corner = torch.zeros(1, 3, 8, 8)
    corner[..., 4:, 4:] = 1
    raw = method(_as_input(method, corner)).raw[0]
    assert abs(raw[3, 3].item() - math.sqrt(2)) < 1e-5
    assert abs(raw[4, 4].item() - math.sqrt(9 + 9)) < 1e-5  # S_x = S_y = 3
    assert abs(raw[6, 3].item() - 4) < 1e-5  # inside the vertical edge, away from the corner


def test_edgecam_equals_cv2_sobel_magnitude():
    method = make_method("edgecam", Stub(), "features")
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    raw = method(_as_input(method, pixels)).raw
    for b in range(2):
        gray = np.einsum("c,chw->hw", np.array(LUMA), pixels[b].double().numpy())
        gx, gy = cv2.Sobel(gray, cv2.CV_64F, 1, 0, ksize=3), cv2.Sobel(gray, cv2.CV_64F, 0, 1, ksize=3)
        reference = torch.from_numpy(np.sqrt(gx**2 + gy**2)).float()
        assert (raw[b] - reference).abs().max() < 1e-5
        assert np.corrcoef(raw[b].flatten().numpy(), reference.flatten().numpy())[0, 1] > 0.9999


def test_edgecam_pytorch_grad_cam_sobel_saturates_8_bit():
    """pytorch-grad-cam's ``sobel_cam`` works on 8-bit images and takes 0.5 |S_x| + 0.5 |S_y| after
    cv2.convertScaleAbs, which saturates at 255: a strong step (0 -> 255, |S_x| = 1020) and a weak
    one (0 -> 32, |S_x| = 128) come out 128 and 64, 2 apart instead of 255 / 32 (ours keeps the ratio)."""
    from pytorch_grad_cam.sobel_cam import sobel_cam

    method = make_method("edgecam", Stub(stride=1), "features")
    img = np.zeros((8, 16, 3), np.uint8)
    img[:, 4:8] = 255  # strong step at columns 3|4, and back down at 7|8
    img[:, 12:] = 32  # weak step at columns 11|12
    theirs = sobel_cam(img).astype(np.float64)
    ours = method(_as_input(method, torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)).raw[0]
    assert abs(ours[4, 3].item() / ours[4, 11].item() - 255 / 32) < 1e-4
    assert (theirs[4, 3], theirs[4, 11]) == (128, 64)


def test_noisecam_is_seeded_uniform_noise():
    x = images_(2, 32, 48)
    method = make_method("noisecam", Stub(), "features", seed=7)
    first, second = method(x), method(x)
    g = torch.Generator().manual_seed(7)
    assert torch.equal(first.raw, torch.rand(2, 32, 48, generator=g))
    assert torch.equal(second.raw, torch.rand(2, 32, 48, generator=g))  # the generator advances
    assert (first.raw - second.raw).abs().max() > 0.5
    assert torch.equal(make_method("noisecam", Stub(), "features", seed=7)(x).maps, first.maps)
    assert (make_method("noisecam", Stub(), "features", seed=8)(x).maps - first.maps).abs().max() > 0.5


@pytest.mark.parametrize("name", ["fakecam", "centercam", "edgecam", "noisecam"])
def test_model_independent_baselines_ignore_the_model(name):
    x = images_(2)
    maps = [make_method(name, Stub(seed=seed), "features", seed=3)(x).maps for seed in (0, 1)]
    assert torch.equal(maps[0], maps[1])
    model_dependent = make_method("dummycam", Stub(seed=0), "features")(x).maps
    assert not torch.equal(model_dependent, make_method("dummycam", Stub(seed=1), "features")(x).maps)
