"""Path-integrated and optimised methods: InteGrad-CAM (the seed project's), Integrated Grad-CAM
(Sattarzadeh et al.) and Opti-CAM (Zhang et al.).

* InteGrad-CAM: Grad-CAM at M = 1; the path points (m = 1 .. M, baselines) and the averaged
  gradients against plain autograd on the whole model;
* Integrated Grad-CAM: stubs whose path integral is known in closed form (a linear head, a
  quadratic one), plain autograd on a small CNN, and the authors' notebook's deviation;
* Opti-CAM: a stub whose optimum is known, the authors' algorithm (``Basic_OptCAM``) re-run image by
  image, per-image early stopping (so batching does not change maps), and its declared passes.
Small CNNs and stubs keep the file fast.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import make_method
from torch import nn

from cambench.data.preprocessing import Preprocessing
from cambench.methods import MethodError
from cambench.methods.base import minmax, upsample
from cambench.models.engine import Passes

GRAY = Preprocessing(mean=(0.0,), std=(1.0,))  # one channel, pixels = model input: the black baseline is 0


class Net(nn.Module):
    """A small random CNN: stem (conv-BN-ReLU-pool) -> features (conv-ReLU, the target) -> GAP -> linear."""

    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.features = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(12, classes)

    def forward(self, x):
        return self.fc(self.features(self.stem(x)).mean((2, 3)))


def net_and_images(n=4):
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():  # non-trivial BN statistics, so a black image has non-zero activations
        model.stem[1].running_mean.uniform_(-0.5, 0.5)
        model.stem[1].running_var.uniform_(0.5, 2.0)
    return model, torch.randn(n, 3, 24, 28)  # not square: a swapped (H, W) fails


def at_layer(model, layer, images, targets):
    """Activations A and d y_c / dA at ``layer`` by plain autograd on the whole model."""
    store = {}

    def hook(module, inputs, output):
        store["a"] = output.detach().clone().requires_grad_(True)
        return store["a"]

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(images)
            (g,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), store["a"])
    finally:
        handle.remove()
    return store["a"].detach(), g


def inputs_seen(model):
    """The batches the model's first layer receives, in order (a list filled by a pre-hook; remove the handle)."""
    seen = []
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    return seen, first.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0].detach().clone()))


def path(images, start, steps, points):
    """x_m = b + (m / M)(x - b) for m in ``points``, image-major."""
    return torch.cat([start + (m / steps) * (x[None] - start) for x in images for m in points])


# ----------------------------------------------------------------------------------------------------
# InteGrad-CAM
# ----------------------------------------------------------------------------------------------------


def test_integradcam_with_one_step_is_gradcam():
    model, images = net_and_images()
    ours = make_method("integradcam", model, "features", steps=1).explain(images)
    grad = make_method("gradcam", model, "features").explain(images, ours.targets)
    torch.testing.assert_close(ours.raw, grad.raw)
    assert ours.passes == Passes(forward=1, backward=1)


@pytest.mark.parametrize("baseline", ["black", "zeros"])
def test_integradcam_averages_the_gradients_over_the_path_points(baseline):
    """Points m = 1 .. M (x is the last, from the clean pass; the baseline is not a point, as the seed's
    ``range(1, n_divides + 1)``), gradients averaged, Grad-CAM weights, activations of x."""
    model, images = net_and_images()
    steps = 4
    method = make_method("integradcam", model, "features", steps=steps, baseline=baseline, batch_size=None)
    seen, handle = inputs_seen(model)
    try:
        ours = method.explain(images)
    finally:
        handle.remove()
    zeros = torch.zeros(1, *images.shape[1:])
    start = Preprocessing().from_pixels(zeros) if baseline == "black" else zeros
    assert baseline == "zeros" or torch.allclose(Preprocessing().to_pixels(start), zeros, atol=1e-6)
    # the clean batch, then the M - 1 inner points of each image (one chunk: the caller's batch size)
    assert [len(s) for s in seen] == [4, 4, 4, 4]
    torch.testing.assert_close(seen[0], images)
    torch.testing.assert_close(torch.cat(seen[1:]), path(images, start, steps, range(1, steps)))

    grads = [
        at_layer(
            model, "features", path(images[i : i + 1], start, steps, range(1, steps + 1)), ours.targets[[i] * steps]
        )[1]
        for i in range(4)
    ]
    weights = torch.stack([g.mean((0, 2, 3)) for g in grads])
    a, _ = at_layer(model, "features", images, ours.targets)
    torch.testing.assert_close(ours.raw, torch.einsum("bk,bkhw->bhw", weights, a), rtol=1e-4, atol=1e-6)
    assert ours.passes == Passes(forward=steps, backward=steps)


def test_path_methods_chunk_and_batch_without_changing_maps():
    model, images = net_and_images()
    for name in ("integradcam", "integratedgradcam"):
        method = make_method(name, model, "features", steps=5)
        first = method.explain(images)
        method.engine.scorer.batch_size = 3  # a device whose full passes run best 3 rows at a time
        seen, handle = inputs_seen(model)
        try:
            torch.testing.assert_close(method.explain(images).raw, first.raw, rtol=1e-5, atol=1e-7)
        finally:
            handle.remove()
        assert [len(s) for s in seen][-6:] == [3, 3, 3, 3, 3, 1]  # 4 images x 4 inner points, 3 rows a pass
        alone = make_method(name, model, "features", steps=5).explain(images[2:3], first.targets[2:3])
        torch.testing.assert_close(alone.raw, first.raw[2:3], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["integradcam", "integratedgradcam"])
def test_path_method_parameters_are_checked(name):
    model, _ = net_and_images()
    with pytest.raises(MethodError, match=f"method {name}: steps must be >= 1"):
        make_method(name, model, "features", steps=0)
    with pytest.raises(MethodError, match=f"method {name}: unknown baseline 'grey'; valid: black, zeros"):
        make_method(name, model, "features", baseline="grey")


# ----------------------------------------------------------------------------------------------------
# Integrated Grad-CAM
# ----------------------------------------------------------------------------------------------------


class Affine(nn.Module):
    """stem (1x1 conv, A = [x, -x, 2x] + c) -> features (target) -> GAP -> head: linear, or quadratic in
    the pooled activations (y_c = sum_k W_ck mean(A_k)^2)."""

    W = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, -1.0]])

    def __init__(self, bias=(0.0, 0.0, 0.0), quadratic=False):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 1)
        self.features = nn.Identity()
        self.quadratic = quadratic
        with torch.no_grad():
            self.stem.weight.copy_(torch.tensor([1.0, -1.0, 2.0]).view(3, 1, 1, 1))
            self.stem.bias.copy_(torch.tensor(bias))

    def forward(self, x):
        pooled = self.features(self.stem(x)).mean((2, 3))
        return (pooled**2 if self.quadratic else pooled) @ self.W.T


X = torch.tensor([[[[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]]], [[[1.0, -2.0, 0.0], [2.0, 2.0, -1.0]]]])  # (2, 1, 2, 3)


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_integratedgradcam_with_a_linear_head_and_an_affine_stem(steps):
    """A(x_m) - A(b) = (m/M)(A(x) - A(b)) and the gradient is W_c / hw everywhere, so the mean over the points
    is (1/M) sum_m m/M = (M + 1) / (2M) times Grad-CAM's term on the activation differences, exactly."""
    bias = torch.tensor([0.5, -1.0, 0.25])
    method = make_method("integratedgradcam", Affine(bias.tolist()), "features", steps=steps, preprocessing=GRAY)
    targets = torch.tensor([0, 1])
    ours = method.explain(X, targets)
    a = torch.cat([X, -X, 2 * X], 1) + bias[:, None, None]
    difference = a - bias[:, None, None]  # A(b) = c for the black baseline b = 0
    term = torch.einsum("bk,bkhw->bhw", Affine.W[targets] / 6, difference)
    torch.testing.assert_close(ours.raw, (steps + 1) / (2 * steps) * torch.relu(term))
    assert ours.passes == Passes(forward=steps + 1, backward=steps)


def test_integratedgradcam_with_a_quadratic_head_converges_to_the_integral():
    """y_c = sum_k W_ck mean(A_k)^2 and A(x_m) = (m/M) A(x): the GAP gradient at x_m is (m/M) 2 W_ck mean(A_k) / hw,
    so the point's term is (m/M)^2 G with G = ReLU(sum_k 2 W_ck mean(A_k) A_k / hw); the mean over the points is
    (M + 1)(2M + 1) / (6 M^2) G, and the integral of beta^2 is 1/3."""
    targets = torch.tensor([0, 1])
    a = torch.cat([X, -X, 2 * X], 1)
    g = torch.relu(torch.einsum("bk,bkhw->bhw", 2 * Affine.W[targets] * a.mean((2, 3)) / 6, a))
    assert (g > 0).any()
    for steps in (4, 300):
        method = make_method("integratedgradcam", Affine(quadratic=True), "features", steps=steps, preprocessing=GRAY)
        raw = method.explain(X, targets).raw
        torch.testing.assert_close(raw, (steps + 1) * (2 * steps + 1) / (6 * steps**2) * g, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(raw, g / 3, rtol=6e-3, atol=0)


def test_integratedgradcam_against_autograd_and_the_authors_notebook():
    """Ours is the authors' figure: per point m = 1 .. M, ReLU(sum_k GAP(g_k) (A_k(x_m) - A_k(b))), averaged.
    Their notebook deviates: points i / M for i = 0 .. M - 1 and A_k(b) taken as 0 (the ``baseline`` argument of
    ``gradient_to_grad_cam_saliency`` is never passed): on a network whose black image has non-zero
    activations the maps differ."""
    model, images = net_and_images()
    steps = 6
    ours = make_method("integratedgradcam", model, "features", steps=steps).explain(images)
    start = Preprocessing().from_pixels(torch.zeros(1, *images.shape[1:]))
    base, _ = at_layer(model, "features", start, ours.targets[:1])
    assert base.abs().amax() > 0.1

    def per_point(points, baseline_activations):
        maps = []
        for i in range(len(images)):
            a, g = at_layer(
                model, "features", path(images[i : i + 1], start, steps, points), ours.targets[[i] * len(points)]
            )
            maps.append(torch.relu(torch.einsum("mk,mkhw->mhw", g.mean((2, 3)), a - baseline_activations)).mean(0))
        return torch.stack(maps)

    figure = per_point(range(1, steps + 1), base)
    torch.testing.assert_close(ours.raw, figure, rtol=1e-4, atol=1e-6)
    notebook = per_point(range(steps), torch.zeros_like(base))
    assert (minmax(ours.raw) - minmax(notebook)).abs().max() > 0.05


def test_integratedgradcam_runs_the_baseline_once_a_batch():
    model, images = net_and_images()
    seen, handle = inputs_seen(model)
    try:
        ours = make_method("integratedgradcam", model, "features", steps=3, batch_size=None).explain(images)
    finally:
        handle.remove()
    assert [len(s) for s in seen] == [4, 1, 4, 4]  # clean batch, the baseline, 2 inner points x 4 images
    assert ours.passes == Passes(forward=4, backward=3)  # per image, the baseline's pass counted whole


# ----------------------------------------------------------------------------------------------------
# Opti-CAM
# ----------------------------------------------------------------------------------------------------


class Regions(nn.Module):
    """A_k = x * R_k for three disjoint blocks R_k on a background that no channel covers; y_c = sum_k V_ck mean(A_k).
    On x = 1 the mask is S / max S (the background is the minimum, 0), so y_c(x * M) is
    sum_k V_ck |R_k| s_k / (hw max s): the optimum keeps the one region with a positive weight, the others at 0."""

    V = torch.tensor([[1.0, -1.0, -0.5], [-1.0, 1.0, -0.5]])

    def __init__(self):
        super().__init__()
        regions = torch.zeros(3, 8, 8)
        regions[0, :3, :3] = regions[1, 5:, 5:] = regions[2, :3, 5:] = 1
        self.register_buffer("regions", regions)
        self.stem = nn.Conv2d(1, 1, 1, bias=False)
        self.features = nn.Identity()
        with torch.no_grad():
            self.stem.weight.fill_(1.0)

    def forward(self, x):
        return self.features(self.stem(x) * self.regions).mean((2, 3)) @ self.V.T


def test_opticam_finds_the_known_optimum():
    model = Regions()
    images, targets = torch.ones(2, 1, 8, 8), torch.tensor([0, 1])
    out = make_method("opticam", model, "features", iterations=50, lr=0.1, preprocessing=GRAY).explain(images, targets)
    regions = model.regions.bool()
    for i, keep in enumerate(targets.tolist()):
        assert out.maps[i][regions[keep]].min() == 1
        others = [k for k in range(3) if k != keep]
        assert out.maps[i][regions[others].any(0)].max() < 0.02  # 1 at the start (uniform weights)
    with torch.no_grad():
        start = model(images * regions.any(0)).gather(1, targets[:, None])[:, 0]  # uniform weights: every block 1
        optimum = model(images * regions[targets][:, None]).gather(1, targets[:, None])[:, 0]
        reached = model(images * out.maps[:, None]).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(start, torch.full((2,), -4.5 / 64))
    torch.testing.assert_close(optimum, torch.full((2,), 9 / 64))
    torch.testing.assert_close(reached, optimum, rtol=0.03, atol=0)


class Normalise(nn.Module):
    """Their ``Preprocessing_Layer``: the model takes pixels in [0, 1]."""

    def forward(self, pixels):
        return Preprocessing().from_pixels(pixels)


def authors_opticam(model, pixels, labels, iterations, lr):
    """Their ``Basic_OptCAM.forward`` (name_loss ``plain``, name_norm ``max_min``, the normalisation inside the model),
    rewritten here: the normalised maps at input size, and the step it stopped at (None: it ran all iterations)."""
    wrapped = nn.Sequential(Normalise(), model)
    store = {}
    handle = model.features.register_forward_hook(lambda m, i, o: store.setdefault("a", o.detach()))
    f_images = wrapped(pixels).gather(1, labels[:, None])[:, 0].detach()
    handle.remove()
    feature = torch.relu(store["a"])
    w = torch.full((feature.shape[0], feature.shape[1], 1, 1), 0.5, requires_grad=True)
    optimizer = torch.optim.Adam([w], lr=lr)
    prev = 1e10

    def combine():
        saliency = (torch.softmax(w, 1) * feature).sum(1, keepdim=True)
        saliency = F.interpolate(saliency, size=pixels.shape[-2:], mode="bilinear", align_corners=False)
        lo = saliency.flatten(1).min(1)[0].view(-1, 1, 1, 1)
        hi = saliency.flatten(1).max(1)[0].view(-1, 1, 1, 1)
        return (saliency - lo) / (hi - lo)

    try:
        for step in range(iterations):
            norm = combine()
            loss = torch.sum(f_images - wrapped(norm * pixels).gather(1, labels[:, None])[:, 0])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % (iterations // 10) == 0:
                if loss > prev:
                    return norm[:, 0].detach(), step
                prev = loss
        return combine()[:, 0].detach(), None
    finally:
        model.zero_grad(set_to_none=True)  # their loss.backward() fills the parameters' .grad


def test_opticam_is_the_authors_algorithm_image_by_image():
    """Ours at batch 4 against their algorithm at batch 1 (their early stopping compares the loss summed over the
    batch, so only at batch 1 is it per image): max |difference| of the maps below 1e-4, with images that stop
    early and images that run all iterations. Their batched run stops all images or none, as the batch's sum says."""
    model, images = net_and_images()
    iterations, lr = 20, 0.5
    pixels = Preprocessing().to_pixels(images)
    ours = make_method("opticam", model, "features", iterations=iterations, lr=lr).explain(images)
    theirs = [authors_opticam(model, pixels[i : i + 1], ours.targets[i : i + 1], iterations, lr) for i in range(4)]
    stops = [stop for _, stop in theirs]
    assert None in stops and any(stop is not None for stop in stops), stops
    assert (ours.maps - torch.cat([m for m, _ in theirs])).abs().max() < 1e-4
    # their batch of 4: its summed loss never rises at a check, so no image stops and those that stop alone differ
    batched, stop = authors_opticam(model, pixels, ours.targets, iterations, lr)
    assert stop is None
    assert ((ours.maps - batched).flatten(1).abs().amax(1) > 0.1).tolist() == [s is not None for s in stops]


def test_opticam_declares_its_passes_and_leaves_the_parameters_alone():
    model, images = net_and_images()
    seen, handle = inputs_seen(model)
    try:
        out = make_method("opticam", model, "features", iterations=3).explain(images)
    finally:
        handle.remove()
    assert [len(s) for s in seen] == [4, 4, 4, 4]  # the clean pass, then one masked pass an iteration
    # the first masked pass: uniform weights (u = 0.5), masked in pixel space (their model starts with the
    # normalisation), so masked-out pixels are black
    a, _ = at_layer(model, "features", images, out.targets)
    mask = minmax(upsample(torch.relu(a).mean(1), images.shape[-2:]))
    first = Preprocessing().from_pixels(Preprocessing().to_pixels(images) * mask[:, None])
    torch.testing.assert_close(seen[1], first, rtol=1e-4, atol=1e-5)
    assert out.passes == Passes(forward=4, input_backward=3)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(MethodError, match="opticam needs iterations >= 1 and lr > 0"):
        make_method("opticam", model, "features", iterations=0)
    with pytest.raises(MethodError, match="opticam needs iterations >= 1 and lr > 0"):
        make_method("opticam", model, "features", lr=0.0)


@pytest.mark.parametrize(
    ("name", "params"),
    [("integradcam", {"steps": 3}), ("integratedgradcam", {"steps": 3}), ("opticam", {"iterations": 3})],
)
def test_runs_under_no_grad_and_inference_mode(name, params):
    model, images = net_and_images()
    plain = make_method(name, model, "features", **params).explain(images)
    with torch.no_grad():
        quiet = make_method(name, model, "features", **params).explain(images)
    with torch.inference_mode():
        inference_images = images.clone()  # an inference tensor
        inference = make_method(name, model, "features", **params).explain(inference_images)
    for out in (quiet, inference):
        torch.testing.assert_close(out.maps, plain.maps, rtol=0, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())
