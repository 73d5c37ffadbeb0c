"""Score-CAM, Ablation-CAM and Recipro-CAM: each checked against a formula worked out by hand on a
stub model and against an independent reference loop (one image at a time, plain model calls,
forward hooks on the *full* model to zero or replace the target layer's output), on the stub and
on resnet18. Also: the declared passes, that Ablation- and Recipro-CAM never rerun the layers
before the target layer, that the scorer's chunking (fixed, probed, or cut down by a CUDA
out-of-memory error) changes no value, and the peers' deviations, each shown numerically."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import make_method
from torch import Tensor, nn

from cambench.models.engine import Passes
from cambench.models.scorer import Scorer, expand_rows, owners

SIZE = 64
GAUSS = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16


class Stub(nn.Module):
    """stem (8 x 8 patches, stride 8: 64 px -> 8 x 8) -> features (1 x 1 conv) -> act -> GAP -> fc.

    With ``relu=False`` the tail after ``features`` (or after ``act``) is linear,
    ``y = W mean_ij(A) + b``, so the perturbation methods have closed forms. ``flat_channel`` makes
    the last channel of ``features`` a constant 0.3 (zero weights, bias 0.3).
    """

    def __init__(self, channels: int = 5, classes: int = 3, relu: bool = False, seed: int = 0, flat_channel=False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.stem = nn.Conv2d(3, channels, 8, stride=8)
        self.features = nn.Conv2d(channels, channels, 1)
        self.act = nn.ReLU() if relu else nn.Identity()
        self.fc = nn.Linear(channels, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.1 if p.dim() == 4 and p.shape[-1] == 8 else 1.0))
            if flat_channel:
                self.features.weight[-1] = 0
                self.features.bias[-1] = 0.3

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.act(self.features(self.stem(x))).mean((2, 3)))


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def capture(model: nn.Module, layer: str, images: Tensor) -> tuple[Tensor, Tensor]:
    """The target layer's output and the logits of a plain forward pass."""
    store = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.append(o.detach().clone()))
    try:
        with torch.no_grad():
            logits = model(images)
    finally:
        handle.remove()
    return store[-1], logits


@contextmanager
def replaced(model: nn.Module, layer: str, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """The output of ``layer`` replaced by ``fn(output)`` in every forward pass of the full model."""
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: fn(o))
    try:
        yield
    finally:
        handle.remove()


# ----------------------------------------------------------------------------------------------
# independent references: one image at a time, plain calls of the full model


def scorecam_reference(model: nn.Module, layer: str, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Score-CAM as the authors' code: (weights (B, K), raw map (B, h, w))."""
    acts, _ = capture(model, layer, images)
    weights = torch.zeros(acts.shape[:2])
    for b in range(len(images)):
        masked, channels = [], []
        for k in range(acts.shape[1]):
            up = F.interpolate(acts[b, k][None, None], images.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
            if acts[b, k].max() == acts[b, k].min():
                continue  # a flat channel: weight 0 (the authors' code skips it)
            masked.append(images[b] * (up - up.min()) / (up.max() - up.min()))
            channels.append(k)
        with torch.no_grad():  # rows one channel each, run in chunks only to save time
            probs = torch.cat([model(torch.stack(masked[i : i + 128])) for i in range(0, len(masked), 128)]).softmax(1)
        weights[b, channels] = probs[:, targets[b]]
    return weights, torch.einsum("bk,bkhw->bhw", weights, acts)


def ablation_reference(model: nn.Module, layer: str, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Ablation-CAM with channel k zeroed by a hook on the full model: (weights, raw map)."""
    acts, logits = capture(model, layer, images)
    weights = torch.zeros(acts.shape[:2])
    for b in range(len(images)):
        clean = logits[b, targets[b]]
        for start in range(0, acts.shape[1], 128):  # row r of a chunk zeroes channel start + r
            ks = list(range(start, min(start + 128, acts.shape[1])))

            def zero(out: Tensor, ks: list[int] = ks) -> Tensor:
                out = out.clone()
                out[range(len(ks)), ks] = 0
                return out

            with replaced(model, layer, zero), torch.no_grad():
                ablated = model(images[b : b + 1].expand(len(ks), -1, -1, -1))[:, targets[b]]
            weights[b, ks] = (clean - ablated) / clean.abs()
    return weights, torch.einsum("bk,bkhw->bhw", weights, acts)


def recipro_reference(model: nn.Module, layer: str, images: Tensor, targets: Tensor, kernel: str) -> Tensor:
    """Recipro-CAM, one position at a time: the layer's output replaced by the masked activation."""
    acts, _ = capture(model, layer, images)
    h, w = acts.shape[-2:]
    maps = torch.zeros(len(images), h, w)
    for b in range(len(images)):
        for i in range(h):
            for j in range(w):
                masked = torch.zeros_like(acts[b : b + 1])
                if kernel == "onehot":
                    masked[0, :, i, j] = acts[b, :, i, j]
                else:  # the feature vector at (i, j) spread over its 3 x 3 neighbourhood, cut at the border
                    for di in (-1, 0, 1):
                        for dj in (-1, 0, 1):
                            if 0 <= i + di < h and 0 <= j + dj < w:
                                masked[0, :, i + di, j + dj] = acts[b, :, i, j] * GAUSS[di + 1, dj + 1]
                with replaced(model, layer, lambda out, m=masked: m), torch.no_grad():
                    maps[b, i, j] = model(images[b : b + 1]).softmax(1)[0, targets[b]]
    return maps


def images_(n: int = 2, size: int = SIZE, seed: int = 1) -> Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# Score-CAM


def test_scorecam_matches_reference_loop_on_stub_and_zeroes_flat_channels():
    model = Stub(flat_channel=True)
    x, targets = images_(), torch.tensor([0, 2])
    out = make_method("scorecam", model, "features")(x, targets)
    weights, raw = scorecam_reference(model, "features", x, targets)
    assert out.targets.tolist() == [0, 2]
    assert out.passes == Passes(forward=1 + 5)
    assert (out.raw - raw).abs().max() < 1e-5
    assert (weights[:, :4] > 0).all() and (weights[:, 4] == 0).all()
    # a flat channel masks the whole image (x * 0): the authors give it weight 0, not p_c(0)
    acts, _ = capture(model, "features", x)
    with torch.no_grad():
        p_blank = model(torch.zeros_like(x)).softmax(1)[range(2), targets]
    assert (out.raw - (raw + p_blank[:, None, None] * acts[:, 4])).abs().max() > 0.2


def test_scorecam_on_resnet18_matches_reference_loop_and_counts_full_passes():
    """resnet18 at layer2 (128 channels, 8 x 8 at 64 px): the masks go through the whole network."""
    model = resnet18()
    x = images_(1)
    rows = []
    handle = model.conv1.register_forward_pre_hook(lambda m, inputs: rows.append(len(inputs[0])))
    try:
        out = make_method("scorecam", model, "layer2")(x)
    finally:
        handle.remove()
    assert out.passes == Passes(forward=1 + 128)  # declared: at most 1 + K
    acts, _ = capture(model, "layer2", x)
    varying = (acts.flatten(2).amax(2) > acts.flatten(2).amin(2)).sum().item()
    assert 0 < varying < 128  # random weights leave a few channels flat at 64 px
    assert sum(rows) == 1 + varying  # the clean pass and one full pass per channel that is not flat
    weights, raw = scorecam_reference(model, "layer2", x, out.targets)
    assert (weights > 0).sum() > 100
    assert (out.raw - raw).abs().max() < 1e-5 * max(1.0, raw.abs().max().item())


def _grad_cam_scorecam_weights(model: nn.Module, layer: str, x: Tensor, targets: Tensor) -> Tensor:
    """pytorch-grad-cam's Score-CAM weights, rebuilt: softmax over channels of the masked logits,
    masks upsampled with align_corners=True and normalised with + 1e-8."""
    acts, _ = capture(model, layer, x)
    up = F.interpolate(acts, x.shape[-2:], mode="bilinear", align_corners=True)
    lo, hi = up.amin((2, 3), keepdim=True), up.amax((2, 3), keepdim=True)
    masks = (up - lo) / (hi - lo + 1e-8)
    with torch.no_grad():
        logits = torch.stack([model(x[b] * masks[b][:, None])[:, targets[b]] for b in range(len(x))])
    return logits.softmax(1)


def _torchcam_scorecam_weights(model: nn.Module, layer: str, x: Tensor, targets: Tensor) -> Tensor:
    """TorchCAM's Score-CAM weights, rebuilt: A_k normalised at feature resolution, then upsampled;
    softmax over channels of masked logit - clean logit."""
    acts, clean = capture(model, layer, x)
    lo = acts.amin((2, 3), keepdim=True)
    normed = (acts - lo) / ((acts - lo).amax((2, 3), keepdim=True) + 1e-8)
    masks = F.interpolate(normed, x.shape[-2:], mode="bilinear", align_corners=False)
    with torch.no_grad():
        logits = torch.stack([model(x[b] * masks[b][:, None])[:, targets[b]] for b in range(len(x))])
    return (logits - clean[range(len(x)), targets][:, None]).softmax(1)


def test_scorecam_peers_weight_differently():
    """Both peers take a softmax *over channels* of masked logits, not the target's softmax
    probability on each masked input (the paper and the authors' code); pytorch-grad-cam also
    upsamples the masks with align_corners=True, TorchCAM normalises A_k before upsampling (and
    subtracts the clean logit, a no-op under the softmax). Their weights sum to 1 over channels,
    ours do not, and the maps differ."""
    from pytorch_grad_cam import ScoreCAM as GradCamScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import ScoreCAM as TorchCamScoreCAM

    model = Stub()
    x = images_()
    ours = make_method("scorecam", model, "features")(x)
    targets = ours.targets
    weights, raw = scorecam_reference(model, "features", x, targets)
    assert (ours.raw - raw).abs().max() < 1e-5
    assert (weights.sum(1) > 2).all()  # five probabilities of the target class, not a distribution over channels
    acts, _ = capture(model, "features", x)

    # pytorch-grad-cam
    with GradCamScoreCAM(model=model, target_layers=[model.features]) as peer:
        peer_targets = [ClassifierOutputTarget(int(t)) for t in targets]
        gc_weights = torch.from_numpy(peer.get_cam_weights(x, model.features, peer_targets, acts.numpy(), None))
        gc_maps = torch.from_numpy(peer(input_tensor=x, targets=peer_targets))
    assert (gc_weights - _grad_cam_scorecam_weights(model, "features", x, targets)).abs().max() < 1e-5
    torch.testing.assert_close(gc_weights.sum(1), torch.ones(2))
    assert (gc_weights - weights).abs().max() > 0.1
    assert (gc_maps - ours.maps).abs().max() > 0.1

    # TorchCAM
    with TorchCamScoreCAM(model, target_layer="features", input_shape=(3, SIZE, SIZE)) as extractor:
        with torch.no_grad():
            model(x)
        tc_weights = extractor._get_weights(targets.tolist())[0]
        tc_cams = extractor(targets.tolist())[0]  # normalised, at feature resolution
    assert (tc_weights - _torchcam_scorecam_weights(model, "features", x, targets)).abs().max() < 1e-5
    assert (tc_weights - weights).abs().max() > 0.1
    ours_low = torch.relu(ours.raw)
    ours_low = (ours_low - ours_low.amin((1, 2), keepdim=True)) / ours_low.flatten(1).amax(1).view(-1, 1, 1)
    assert (tc_cams - ours_low).abs().max() > 0.05


# ----------------------------------------------------------------------------------------------
# Ablation-CAM


def test_ablationcam_closed_form_on_linear_tail():
    """With a linear tail y = W mean(A) + b, zeroing A_k lowers y_c by W_ck mean(A_k)."""
    model = Stub()
    x, targets = images_(), torch.tensor([1, 0])
    out = make_method("ablationcam", model, "features")(x, targets)
    acts, logits = capture(model, "features", x)
    y = logits[range(2), targets]
    weights = model.fc.weight.detach()[targets] * acts.mean((2, 3)) / y.abs()[:, None]
    assert out.passes == Passes(forward=1, tail=5)
    assert (out.raw - torch.einsum("bk,bkhw->bhw", weights, acts)).abs().max() < 1e-5


def test_ablationcam_matches_hook_loop_on_nonlinear_stub():
    model = Stub(relu=True)
    x, targets = images_(), torch.tensor([2, 1])
    out = make_method("ablationcam", model, "features")(x, targets)
    weights, raw = ablation_reference(model, "features", x, targets)
    assert (weights != 0).all()
    assert (out.raw - raw).abs().max() < 1e-5


def test_ablationcam_negative_score_does_not_invert_the_map():
    """Shifting the target's bias from +20 to -20 leaves every y_c - y_c^(k) unchanged and only
    changes |y_c|: the raw map scales by a positive factor and the map stays the same. With the
    paper's division by y_c (pytorch-grad-cam) the negative score flips every weight."""
    from pytorch_grad_cam import AblationCAM as GradCamAblationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x, targets = images_(), torch.tensor([0, 0])
    outs = {}
    for bias in (20.0, -20.0):
        model = Stub(relu=True)
        with torch.no_grad():
            model.fc.bias[0] = bias
        outs[bias] = make_method("ablationcam", model, "act")(x, targets)
    y_pos, y_neg = (outs[b].logits[:, 0] for b in (20.0, -20.0))
    assert (y_pos > 0).all() and (y_neg < 0).all()
    ratio = (y_pos.abs() / y_neg.abs())[:, None, None]
    assert (outs[-20.0].raw - outs[20.0].raw * ratio).abs().max() < 1e-5
    assert (outs[-20.0].maps - outs[20.0].maps).abs().max() < 1e-5
    assert outs[20.0].maps.amax((1, 2)).min() == 1

    # pytorch-grad-cam (activations after ReLU: min(A) == 0, so it ablates to zero as we do)
    acts, logits = capture(model, "act", x)
    assert acts.min() == 0
    peer_targets = [ClassifierOutputTarget(0)] * 2
    with GradCamAblationCAM(model=model, target_layers=[model.act]) as peer:
        peer_weights = torch.from_numpy(peer.get_cam_weights(x, model.act, peer_targets, acts.numpy(), None))
    ours_weights = model.fc.weight.detach()[0] * acts.mean((2, 3)) / logits[:, :1].abs()
    assert (peer_weights + ours_weights).abs().max() < 1e-4 * ours_weights.abs().max()  # every sign flipped
    assert (ours_weights.abs() > 1e-3).any()


def test_ablationcam_pytorch_grad_cam_ablates_signed_activations_far_below_zero():
    """Where min(A) != 0 pytorch-grad-cam does not zero channel k but sets it to min(A) - 1e7, and
    its AblationLayer writes in place: the i-th row of a batch gets min(A) - (i + 1) 1e7. On a
    linear tail its weights are then W_ck (mean(A_k) - v_k) / y_c, dominated by the 1e7."""
    from pytorch_grad_cam import AblationCAM as GradCamAblationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = Stub()
    x = images_(1)
    ours = make_method("ablationcam", model, "features")(x)
    c = int(ours.targets[0])
    acts, logits = capture(model, "features", x)
    assert acts.min() < 0
    with GradCamAblationCAM(model=model, target_layers=[model.features]) as peer:
        peer_weights = torch.from_numpy(
            peer.get_cam_weights(x, model.features, [ClassifierOutputTarget(c)], acts.numpy(), None)
        ).double()
    w_c, y = model.fc.weight.detach()[c].double(), logits[0, c].double()
    values = acts.min().double() - 1e7 * torch.arange(1, 6, dtype=torch.float64)
    expected = w_c * (acts[0].mean((1, 2)).double() - values) / y
    assert (peer_weights[0] - expected).abs().max() < 1e-4 * expected.abs().max()
    ours_weights = w_c * acts[0].mean((1, 2)).double() / y.abs()
    assert (peer_weights[0].abs() / ours_weights.abs()).min() > 1e6


def test_ablationcam_inner_resnet_layer_uses_the_residual_side_tensor():
    """layer4.0.conv2 sits inside a residual block: the tail needs the block's identity branch
    (downsampled) as a side tensor. Same weights as zeroing the channel in the full model; the
    tolerance is relative 1e-4, not 1e-5: 512 weights, each a difference of two float32 logits
    from differently batched convolutions, sum to about 2e-5 of rounding noise."""
    model = resnet18()
    x = images_(1)
    calls, fc_rows = [], []
    handles = [
        model.conv1.register_forward_pre_hook(lambda m, inputs: calls.append(len(inputs[0]))),
        model.fc.register_forward_pre_hook(lambda m, inputs: fc_rows.append(len(inputs[0]))),
    ]
    try:
        out = make_method("ablationcam", model, "layer4.0.conv2")(x)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [1], "the layers before the target layer ran more than once (for the clean pass)"
    assert sum(fc_rows) == 1 + 512  # the clean pass and one tail pass per channel
    assert out.passes == Passes(forward=1, tail=512)
    weights, raw = ablation_reference(model, "layer4.0.conv2", x, out.targets)
    assert (weights != 0).sum() > 400
    assert (out.raw - raw).abs().max() < 1e-4 * max(1.0, raw.abs().max().item())


# ----------------------------------------------------------------------------------------------
# Recipro-CAM


@pytest.mark.parametrize("kernel", ["onehot", "gaussian"])
def test_reciprocam_closed_form_on_linear_tail(kernel):
    """Linear tail: the masked activation's mean is A(i, j) s_ij / hw with s_ij = 1 (one-hot) or
    the sum of the 3 x 3 kernel left inside the map: r_i r_j, r = 3/4 on the border rows/columns."""
    model = Stub()
    x, targets = images_(), torch.tensor([2, 0])
    out = make_method("reciprocam", model, "features", kernel=kernel)(x, targets)
    acts, _ = capture(model, "features", x)
    r = torch.ones(8)
    if kernel == "gaussian":
        r[0] = r[-1] = 0.75
    pooled = acts * (r[:, None] * r[None, :]) / 64  # (B, K, h, w): the GAP of each masked activation
    logits = torch.einsum("ck,bkhw->bchw", model.fc.weight.detach(), pooled) + model.fc.bias.detach()[:, None, None]
    expected = logits.softmax(1)[range(2), targets]
    assert out.passes == Passes(forward=1, tail=64)
    assert (out.raw - expected).abs().max() < 1e-5


@pytest.mark.parametrize(
    ("layer", "size"),
    [("layer4", 64), ("layer4.0.conv2", 96)],
)
@pytest.mark.parametrize("kernel", ["onehot", "gaussian"])
def test_reciprocam_matches_reference_loop_and_explains_each_image_for_its_own_target(layer, size, kernel):
    """resnet18 at layer4 (2 x 2 at 64 px) and split inside a residual block (layer4.0.conv2, 3 x 3
    at 96 px: corners, edges and a centre). Two images, two different targets: the authors' code
    scores every image of a batch for the first image's class; we score each for its own."""
    model = resnet18()
    x, targets = images_(2, size), torch.tensor([3, 7])
    calls = []
    handle = model.conv1.register_forward_pre_hook(lambda m, inputs: calls.append(len(inputs[0])))
    try:
        out = make_method("reciprocam", model, layer, kernel=kernel)(x, targets)
    finally:
        handle.remove()
    assert calls == [2]
    h, w = out.raw.shape[-2:]
    assert out.passes == Passes(forward=1, tail=h * w)
    expected = recipro_reference(model, layer, x, targets, kernel)
    assert (out.raw - expected).abs().max() < 1e-5
    first_class = recipro_reference(model, layer, x[1:], targets[:1], kernel)
    assert (out.raw[1] - first_class[0]).abs().max() > 1e-3


def test_ablation_and_reciprocam_never_rerun_the_layers_before_the_target():
    """A forward pre-hook on conv1 (before the target) sees the clean pass only, one call of B rows;
    the fc after it sees the clean rows and every ablated or masked row: B + (channels that are not
    all zero; ablating a zero channel changes nothing) for Ablation-CAM, B (1 + hw) for Recipro-CAM."""
    model = resnet18()
    x = images_(2)
    acts, _ = capture(model, "layer4", x)
    nonzero_channels = (acts != 0).flatten(2).any(2).sum().item()
    assert 0 < nonzero_channels < 2 * 512
    conv_rows, fc_rows = [], []
    handles = [
        model.conv1.register_forward_pre_hook(lambda m, inputs: conv_rows.append(len(inputs[0]))),
        model.fc.register_forward_pre_hook(lambda m, inputs: fc_rows.append(len(inputs[0]))),
    ]
    try:
        for name, tail_rows, declared in (("ablationcam", nonzero_channels, 512), ("reciprocam", 2 * 4, 4)):
            conv_rows.clear(), fc_rows.clear()
            out = make_method(name, model, "layer4")(x)
            assert conv_rows == [2], name
            assert sum(fc_rows) == 2 + tail_rows, name
            assert out.passes == Passes(forward=1, tail=declared)
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------------------------------
# chunking


@pytest.mark.parametrize(
    ("name", "layer", "params"),
    [
        ("scorecam", "features", {}),
        ("ablationcam", "features", {}),
        ("reciprocam", "features", {}),
        ("reciprocam", "features", {"kernel": "gaussian"}),
    ],
)
def test_chunk_size_changes_no_value(name, layer, params):
    """Fixed chunks of 1 and 7 rows (7 straddles the two images' rows) and the probed size."""
    model = Stub(relu=True)
    x, targets = images_(), torch.tensor([0, 1])
    raws = [make_method(name, model, layer, batch_size=bs, **params)(x, targets).raw for bs in (1, 7, None)]
    scale = raws[0].abs().max()
    assert (raws[0] - raws[1]).abs().max() <= 1e-6 * scale  # float rounding of batched convolutions only
    assert (raws[0] - raws[2]).abs().max() <= 1e-6 * scale


def test_owners_and_expand_rows():
    """Row r = b * M + m; a chunk within one image is an expanded view, one across images a gather."""
    image, perturbation = owners(slice(5, 12), 4, torch.device("cpu"))
    assert image.tolist() == [1, 1, 1, 2, 2, 2, 2]
    assert perturbation.tolist() == [1, 2, 3, 0, 1, 2, 3]
    t = torch.arange(3 * 2.0).view(3, 2)
    within = expand_rows(t, slice(4, 7), 4)
    assert within.tolist() == [[2.0, 3.0]] * 3
    assert within.stride(0) == 0 and within.data_ptr() == t[1].data_ptr()
    across = expand_rows(t, slice(3, 9), 4)
    assert across.tolist() == [t[i].tolist() for i in (0, 1, 1, 1, 1, 2)]


class OOMSplit:
    """A split whose forward raises CUDA out-of-memory above ``limit`` rows; logits = rows @ P,
    and a fixed delay per call, so that the probe keeps doubling the chunk (time per row falls)."""

    tail_is_full_forward = False

    def __init__(self, limit: float):
        self.limit = limit
        self.sizes: list[int] = []
        self.proj = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))

    def forward(self, images: Tensor, grad_from: int | None = None) -> tuple[list, Tensor]:
        self.sizes.append(len(images))
        if len(images) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (simulated, {len(images)} rows)")
        time.sleep(0.005)
        return [], (images[:, :, None] * self.proj).sum(1)  # elementwise: no BLAS thread start-up in the timing


@pytest.fixture
def one_thread():
    """One intra-op thread: on a CPU, waking the thread pool after the stub's sleep costs milliseconds
    at random, which would mislead the probe's timing of the tiny chunks."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("batch_size", [16, None])
def test_scorer_backs_off_after_cuda_out_of_memory(batch_size, one_thread):
    """Fixed chunks of 16 rows halve to 8 and 4; the probe (1, 2, 4, 8) falls back to 4. Every row
    is scored once, with the values of a run that never ran out of memory."""
    rows = torch.randn(60, 4, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 2])
    expected = Scorer(OOMSplit(float("inf")), 60).score_rows(targets, 30, lambda r: (rows[r],), output="probability")
    split = OOMSplit(limit=5)
    scorer = Scorer(split, batch_size)
    scores = scorer.score_rows(targets, 30, lambda r: (rows[r],), output="probability")
    assert (scores - expected).abs().max() < 1e-6
    assert max(split.sizes) > 5  # it did run out of memory
    last_oom = max(i for i, n in enumerate(split.sizes) if n > 5)
    after = split.sizes[last_oom + 1 :]
    settled = scorer.batch_size if batch_size else next(iter(scorer.probes.values())).best
    assert settled is not None and settled <= 5
    assert max(after) <= 5 and after[-1] <= settled
    with pytest.raises(torch.cuda.OutOfMemoryError):  # one row that does not fit is an error, not a loop
        Scorer(OOMSplit(limit=0), batch_size).score_rows(targets, 3, lambda r: (rows[r],))
