"""Gradient methods (Grad-CAM, Grad-CAM++, XGrad-CAM, HiRes-CAM, LayerCAM, Smooth Grad-CAM++) and
their gradient-free relatives Eigen-CAM and CAM.

* formulas on hand-made activations and gradients, with hand-computed values;
* the base pipeline on an analytic stub model (prediction vs given targets, normalisation);
* autograd confined to the layers after the target layer, also under ``torch.no_grad()`` and
  ``torch.inference_mode()``;
* parity with pytorch-grad-cam and TorchCAM on randomly initialised torchvision models, and
  tests that show where a peer deviates from the paper formula (and why).
"""

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import torch
import torchcam.methods as tc
import torchvision
from conftest import make_engine, make_method
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection
from torch import nn

from cambench.methods import METHODS, MethodError, build_method
from cambench.methods.base import finalise, minmax, upsample
from cambench.methods.eigencam import first_component
from cambench.methods.gradcampp import gradcampp_weights
from cambench.models.engine import Passes

METHOD_NAMES = ["gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "smoothgradcampp", "eigencam", "cam"]
SINGLE_LAYER = [name for name in METHOD_NAMES if name != "layercam"]
PGC = {
    "gradcam": pgc.GradCAM,
    "gradcampp": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "hirescam": pgc.HiResCAM,
    "layercam": pgc.LayerCAM,
}
ARCHS = {"resnet18": "layer4", "vgg11_bn": "features.27", "mobilenet_v3_small": "features.12"}
# Randomly initialised MobileNetV3-small has maps of magnitude 1e-10 at features.12 (tiny classifier
# init): below pytorch-grad-cam's absolute eps (1e-7) in its min-max, which then costs ~1e-4 of the
# map (test_pytorch_grad_cam_normalisation_eps_on_tiny_maps). Parity runs with the logits scaled:
# the argmax is unchanged and Grad-CAM, XGrad-CAM, HiRes-CAM and LayerCAM maps are linear in them.
LOGIT_SCALE = {"mobilenet_v3_small": 1e4}
_NETS: dict = {}


def net(arch, logit_scale=1.0):
    """(model, 4 images of 80 x 96 px, 64 x 80 for the slower VGG), random weights from ``torch.manual_seed(0)``;
    built once per module. The images are not square, so a swapped (H, W) fails."""
    key = (arch, logit_scale)
    if key not in _NETS:
        torch.manual_seed(0)
        model = torchvision.models.get_model(arch, num_classes=10).eval()
        images = torch.randn(4, 3, 64, 80) if arch == "vgg11_bn" else torch.randn(4, 3, 80, 96)
        if arch == "vgg11_bn":  # no .grad for its 120M classifier weights in the peers' backward (a speed-up)
            model.classifier.requires_grad_(False)
        if logit_scale != 1.0:
            last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
            with torch.no_grad():
                last.weight.mul_(logit_scale)
                last.bias.mul_(logit_scale)
        _NETS[key] = model, images
    return _NETS[key]


def reference(model, layer, images, targets=None):
    """Activations A and d y_c / dA at ``layer`` by plain autograd on the whole model, independent of the
    split; the hook hands a copy on, so in-place ops after the layer leave A intact."""
    store = {}

    def hook(module, inputs, output):
        store["a"] = output.detach().clone().requires_grad_(True)
        return store["a"].clone()

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(images)
            if targets is None:
                targets = logits.argmax(1)
            (g,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), store["a"])
    finally:
        handle.remove()
    return store["a"].detach(), g, targets


def pgc_maps(cls, model, layer, images, targets):
    """pytorch-grad-cam's final maps (B, H, W) for ``targets``."""
    with cls(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    model.zero_grad(set_to_none=True)  # its loss.backward() fills the parameters' .grad
    return torch.from_numpy(maps)


def torchcam_cams(cls, model, layers, images, targets, **kwargs):
    """TorchCAM's per-layer maps: feature resolution, ReLU (gradient methods) and min-max per sample."""
    with cls(model, layers, **kwargs) as extractor:
        scores = model(images)
        cams = extractor(class_idx=[int(t) for t in targets], scores=scores)
    model.zero_grad(set_to_none=True)
    return [cam.detach() for cam in cams]


def torchcam_normalise(raw):
    """TorchCAM's ReLU and per-sample (x - min) / (max - min + 1e-8), for maps computed here as TorchCAM would."""
    x = torch.relu(raw)
    x = x - x.flatten(1).amin(1)[:, None, None]
    return x / (x.flatten(1).amax(1)[:, None, None] + 1e-8)


def weighted(weights, activations):
    return torch.einsum("bk,bkhw->bhw", weights, activations)


def maxdiff(a, b):
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------------------------------
# registry and hand-made formulas
# ----------------------------------------------------------------------------------------------------


def test_registry_lists_the_methods_and_rejects_unknown_names():
    model = Stub()
    assert set(METHOD_NAMES) <= set(METHODS)
    assert all(METHODS[name].name == name for name in METHOD_NAMES)
    with pytest.raises(MethodError, match=r"unknown method 'nosuch'; valid choices: ") as err:
        build_method("nosuch", make_engine(model, "features"))
    assert all(name in str(err.value) for name in METHOD_NAMES)


@pytest.mark.parametrize("name", SINGLE_LAYER)
def test_single_layer_method_given_several_layers_raises(name):
    model, _ = net("resnet18")
    with pytest.raises(MethodError, match=rf"method {name} takes one target layer, got 2 \(layer3, layer4\)"):
        make_method(name, model, ["layer3", "layer4"])


# two channels on a 2 x 2 grid: channel 0 has mixed gradients, channel 1 only non-positive ones
A = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[3.0, 0.0], [0.0, 1.0]]]])  # sum_ij A = 4 and 4
G = torch.tensor([[[[1.0, -1.0], [0.0, 2.0]], [[-2.0, 0.0], [0.0, 0.0]]]])


@pytest.fixture(scope="module")
def stub_methods():
    model = Stub()
    return {name: make_method(name, model, "features") for name in METHOD_NAMES if name != "cam"}


def test_gradcam_formula(stub_methods):
    # channel means of G: 2/4 = 0.5 and -2/4 = -0.5 -> 0.5 A_0 - 0.5 A_1
    raw = stub_methods["gradcam"].cam(A, G)
    torch.testing.assert_close(raw, torch.tensor([[[-1.0, 1.0], [0.0, 0.0]]]))


def test_gradcampp_formula():
    # alpha = g^2 / (2 g^2 + 4 g^3): g = 1 -> 1/6, g = 2 -> 4/40 = 1/10; g = -1 and g = -2 are cut by ReLU(g),
    # g = 0 gives alpha = 0. w_0 = 1/6 * 1 + 1/10 * 2 = 11/30, w_1 = 0.
    torch.testing.assert_close(
        gradcampp_weights(A, G, G**2, G**3), torch.tensor([[11 / 30, 0.0]]), rtol=1e-5, atol=1e-7
    )
    # the powers are taken as given (Smooth Grad-CAM++ passes averages, G_2 != G_1^2): on one position with
    # A = 1, G_1 = 1, G_2 = 3, G_3 = 1: alpha = 3 / (6 + 1), w = 3/7 (from G_1 alone it would be 1/3)
    one = torch.ones(1, 1, 1, 1)
    torch.testing.assert_close(gradcampp_weights(one, one, 3 * one, one), torch.tensor([[3 / 7]]), rtol=1e-5, atol=0)
    # no gradient, no weight: 0 / (0 + eps) = 0, not NaN
    zeros = torch.zeros(1, 1, 2, 2)
    assert gradcampp_weights(A[:, :1], zeros, zeros, zeros).tolist() == [[0.0]]


def test_gradcampp_map(stub_methods):
    torch.testing.assert_close(stub_methods["gradcampp"].cam(A, G), 11 / 30 * A[:, 0], rtol=1e-5, atol=1e-7)


def test_xgradcam_formula(stub_methods):
    # w_0 = (1 - 2 + 0 + 2) / 4 = 0.25, w_1 = -6 / 4 = -1.5
    expected = torch.tensor([[[0.25 - 4.5, 0.5], [0.0, 0.25 - 1.5]]])
    torch.testing.assert_close(stub_methods["xgradcam"].cam(A, G), expected)


def test_hirescam_formula(stub_methods):
    # sum_k g_k A_k element-wise: [[1, -2], [0, 2]] + [[-6, 0], [0, 0]]
    torch.testing.assert_close(stub_methods["hirescam"].cam(A, G), torch.tensor([[[-5.0, -2.0], [0.0, 2.0]]]))


def test_layercam_formula(stub_methods):
    # sum_k ReLU(g_k) A_k: only channel 0's positive gradients count
    torch.testing.assert_close(stub_methods["layercam"].cam(A, G), torch.tensor([[[1.0, 0.0], [0.0, 2.0]]]))


def test_eigencam_first_component_on_a_rank_one_matrix():
    # A_k(p) = u_k s(p) + c_k: centred, M = s u^T, so M v_1 = +-|u| s = +-5 s
    s = torch.tensor([[1.0, -1.0], [2.0, -2.0]])
    for u, sign in ((torch.tensor([3.0, 4.0]), 1.0), (torch.tensor([-3.0, -4.0]), -1.0)):
        acts = (u[:, None, None] * s + torch.tensor([10.0, -7.0])[:, None, None])[None]
        # the sign makes the map correlate positively with the channel mean 3.5 s (or -3.5 s)
        torch.testing.assert_close(first_component(acts), sign * 5 * s[None], rtol=1e-5, atol=1e-5)
    # rank > 1: same projection as pytorch-grad-cam's get_2d_projection, up to sign, and positively
    # correlated with the centred channel mean
    torch.manual_seed(0)
    acts = torch.randn(3, 6, 4, 5)
    ours = first_component(acts)
    theirs = torch.from_numpy(get_2d_projection(acts.numpy()))
    sign = torch.sign((ours * theirs).sum((1, 2)))[:, None, None]
    torch.testing.assert_close(ours, sign * theirs, rtol=1e-4, atol=1e-5)
    mean_map = acts.mean(1) - acts.mean((1, 2, 3))[:, None, None]
    assert ((ours * mean_map).sum((1, 2)) > 0).all()


def test_minmax_is_exact_and_upsample_uses_half_pixel_centres():
    maps = torch.tensor([[[2.0, 4.0], [6.0, 10.0]], [[3.0, 3.0], [3.0, 3.0]]])
    torch.testing.assert_close(minmax(maps), torch.tensor([[[0.0, 0.25], [0.5, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]))
    up = upsample(torch.tensor([[[0.0, 1.0]]]), (1, 4))  # cv2.resize INTER_LINEAR: 0, .25, .75, 1
    torch.testing.assert_close(up, torch.tensor([[[0.0, 0.25, 0.75, 1.0]]]))


# ----------------------------------------------------------------------------------------------------
# the pipeline on an analytic stub
# ----------------------------------------------------------------------------------------------------


class Stub(nn.Module):
    """stem (1x1 conv: A = [x, -x, 2x]) -> features (target) -> global average pool -> linear (no bias).
    y_c = sum_k W_ck mean(A_k), so dy_c/dA_k = W_ck / hw: Grad-CAM is sum_k W_ck A_k / hw, CAM without the 1/hw."""

    W = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, -1.0]])

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 1)
        self.features = nn.Identity()
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.stem.weight.copy_(torch.tensor([1.0, -1.0, 2.0]).view(3, 1, 1, 1))
            self.stem.bias.zero_()
            self.fc.weight.copy_(self.W)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.features(self.stem(x)).mean((2, 3)))


X = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])  # logits: class 0 = 1.5 + 0.5 * 3 = 3, class 1 = -1.5 - 3 = -4.5


def test_pipeline_on_stub_uses_prediction_or_given_targets():
    method = make_method("gradcam", Stub(), "features")
    out = method.explain(X)
    torch.testing.assert_close(out.logits, torch.tensor([[3.0, -4.5]]))
    assert out.targets.tolist() == [0]
    # class 0: (A_0 + 0.5 A_2) / 4 = 2x / 4; min-max -> x / 3; already at input size, so not resampled
    torch.testing.assert_close(out.raw, X[:, 0] / 2)
    torch.testing.assert_close(out.maps, X[:, 0] / 3)
    assert out.passes == Passes(forward=1, backward=1) and not out.constant.any()
    # class 1: (A_1 - A_2) / 4 = -3x / 4 <= 0 -> ReLU -> flat, and flagged so
    out1 = method.explain(X, torch.tensor([1]))
    assert out1.targets.tolist() == [1]
    torch.testing.assert_close(out1.raw, -0.75 * X[:, 0])
    assert out1.maps.abs().max() == 0 and out1.constant.all()


def test_cam_raw_map_is_the_classifier_weighted_sum_on_stub():
    method = make_method("cam", Stub(), "features")
    acts = torch.cat([X, -X, 2 * X], 1)
    for c, expected in ((0, 2 * X[:, 0]), (1, -3 * X[:, 0])):  # x + 0.5 * 2x and -x - 2x
        out = method.explain(X, torch.tensor([c]))
        torch.testing.assert_close(out.raw, expected)
        torch.testing.assert_close(out.raw, weighted(Stub.W[[c]], acts))
    assert out.passes == Passes(forward=1, backward=0)


# ----------------------------------------------------------------------------------------------------
# autograd only after the target layer; no_grad / inference_mode callers
# ----------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:For backward hooks to be called")  # torch.fx traces through layer3
def test_backward_stops_at_the_target_layer_under_any_grad_mode():
    """Target layer4.1.bn2 is followed by the block's in-place ``out += identity``. Everything before it
    must run without autograd (forward pre-hooks see grad mode off), no backward may reach layer3 and
    no parameter may get a .grad, whether the caller is in grad mode, no_grad or inference_mode."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    target = "layer4.1.bn2"
    leaves = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
    before = leaves[: leaves.index(target)]  # definition order: all of these run before the target
    seen: dict[str, list[bool]] = {}

    def pre_hook(name):
        return lambda module, inputs: seen.setdefault(name, []).append(torch.is_grad_enabled())

    for name in [*before, "fc"]:
        model.get_submodule(name).register_forward_pre_hook(pre_hook(name))
    images = torch.randn(2, 3, 64, 64)
    model(images)  # the probes can fail: a plain forward records grad mode on
    assert all(seen[name] == [True] for name in before)
    seen.clear()
    # on layer3 and on its convolutions (the split calls leaf modules, never the Sequential itself; a BatchNorm
    # hook would break the in-place ReLU after it in a plain forward)
    fired = []
    for module in [model.layer3, *(m for m in model.layer3.modules() if isinstance(m, nn.Conv2d))]:
        module.register_full_backward_hook(lambda *args: fired.append(True))
    # ... and a split at layer2 backpropagates into layer3
    make_method("gradcam", model, "layer2").explain(images)
    assert fired and seen["layer2.1.bn2"] == [False] and seen["layer3.0.conv1"] == [True]
    fired.clear()
    seen.clear()

    method = make_method("gradcam", model, target)
    plain = method.explain(images)
    assert set(seen) == {*before, "fc"}
    assert all(seen[name] == [False] for name in before), "a layer before the target layer recorded a graph"
    assert seen["fc"] == [True]
    for mode in (torch.no_grad, torch.inference_mode):
        seen.clear()
        with mode():
            out = method.explain(images)
        assert all(seen[name] == [False] for name in before) and seen["fc"] == [True]
        assert torch.equal(out.maps, plain.maps) and torch.equal(out.raw, plain.raw)
    assert not fired, "the backward pass ran through layer3, before the target layer"
    assert all(p.grad is None for p in model.parameters())
    assert plain.maps.shape == (2, 64, 64) and plain.maps.min() == 0 and plain.maps.max() == 1
    # the in-place add after the target did not alter the activations the map was computed from
    a, g, _ = reference(model, target, images, plain.targets)
    torch.testing.assert_close(plain.raw, weighted(g.mean((2, 3)), a), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_no_grad_and_inference_mode_give_the_plain_maps(name):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    images = torch.randn(2, 3, 64, 64)
    layers = ["layer3", "layer4"] if name == "layercam" else "layer4"
    params = {"samples": 2} if name == "smoothgradcampp" else {}

    def build():
        return make_method(name, model, layers, **params)

    plain = build().explain(images)
    with torch.no_grad():
        quiet = build().explain(images)
    with torch.inference_mode():
        inference_images = images.clone()  # an inference tensor
        inference = build().explain(inference_images)
    for out in (quiet, inference):
        torch.testing.assert_close(out.maps, plain.maps, rtol=0, atol=1e-6)
        assert torch.equal(out.targets, plain.targets)
    assert all(p.grad is None for p in model.parameters())


def test_bf16_autocast_maps_stay_close_to_fp32():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    images = torch.randn(2, 3, 64, 64)
    for name in ("gradcam", "layercam", "eigencam"):
        fp32 = make_method(name, model, "layer4").explain(images)
        engine = make_engine(model, "layer4")
        engine.autocast_dtype = torch.bfloat16
        bf16 = build_method(name, engine).explain(images, fp32.targets)
        assert bf16.maps.dtype == torch.float32 and bf16.logits.dtype == torch.float32
        assert bf16.raw.dtype == torch.float32
        assert (bf16.maps - fp32.maps).abs().mean() < 0.05, name
        assert (bf16.maps - fp32.maps).abs().max() > 0, "autocast had no effect"


# ----------------------------------------------------------------------------------------------------
# parity with pytorch-grad-cam
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", PGC)
def test_agrees_with_pytorch_grad_cam(arch, name):
    layer = ARCHS[arch]
    model, images = net(arch, LOGIT_SCALE.get(arch, 1.0))
    ours = make_method(name, model, layer).explain(images)
    theirs = pgc_maps(PGC[name], model, layer, images, ours.targets)
    assert not ours.constant.any() and (theirs.flatten(1).amax(1) > 0.99).all()
    assert maxdiff(ours.maps, theirs) < 1e-4


def test_smoothgradcampp_with_sigma_zero_is_gradcampp_and_agrees_with_pytorch_grad_cam():
    model, images = net("resnet18")
    smooth = make_method("smoothgradcampp", model, "layer4", sigma=0.0, samples=3).explain(images)
    plain = make_method("gradcampp", model, "layer4").explain(images)
    assert torch.equal(smooth.targets, plain.targets)
    torch.testing.assert_close(smooth.raw, plain.raw, rtol=1e-5, atol=1e-6)
    assert maxdiff(smooth.maps, plain.maps) < 1e-5
    theirs = pgc_maps(pgc.GradCAMPlusPlus, model, "layer4", images, smooth.targets)
    assert maxdiff(smooth.maps, theirs) < 1e-4
    assert smooth.passes == Passes(forward=4, backward=3)


@pytest.mark.parametrize("arch", ARCHS)
def test_eigencam_agrees_with_pytorch_grad_cam_up_to_sign(arch):
    """pytorch-grad-cam keeps whatever sign LAPACK returns; ours correlates with the channel mean. The raw
    projections agree up to sign, and the final maps agree where the signs do (elsewhere they are the
    maps of the negated projection)."""
    layer = ARCHS[arch]
    model, images = net(arch)
    ours = make_method("eigencam", model, layer).explain(images)
    acts, _, _ = reference(model, layer, images)
    projection = torch.from_numpy(get_2d_projection(acts.numpy()))
    sign = torch.sign((ours.raw * projection).sum((1, 2)))
    scale = projection.flatten(1).abs().amax(1)[:, None, None]
    assert maxdiff(ours.raw / scale, sign[:, None, None] * projection / scale) < 1e-4
    mean_map = acts.mean(1) - acts.mean((1, 2, 3))[:, None, None]
    assert ((ours.raw * mean_map).sum((1, 2)) > 0).all()

    theirs = pgc_maps(pgc.EigenCAM, model, layer, images, ours.targets)
    same = sign > 0
    if same.any():
        assert maxdiff(ours.maps[same], theirs[same]) < 1e-4
    if not same.all():  # their map is the other sign's: ReLU keeps the opposite side
        assert maxdiff(ours.maps[~same], theirs[~same]) > 0.1
    as_ours = finalise(sign[:, None, None] * projection, images.shape[-2:])
    torch.testing.assert_close(ours.maps, as_ours, atol=1e-4, rtol=0)


def test_pytorch_grad_cam_normalisation_eps_on_tiny_maps():
    """Peer deviation (why the parity tests scale MobileNetV3's logits): pytorch-grad-cam min-max normalises
    with (x - min) / (max + 1e-7). Random MobileNetV3-small Grad-CAM maps are ~1e-10, so after its first
    normalisation the map peaks near 1e-3 and the second normalisation's eps costs ~1e-4 of the map. Our
    min-max is exact; applying their normalisation to our raw map reproduces their output."""
    model, images = net("mobilenet_v3_small")
    ours = make_method("gradcam", model, "features.12").explain(images)
    assert ours.raw.abs().max() < 1e-7
    theirs = pgc_maps(pgc.GradCAM, model, "features.12", images, ours.targets)
    assert maxdiff(ours.maps, theirs) > 2e-5
    height, width = images.shape[-2:]
    as_theirs = scale_cam_image(scale_cam_image(np.maximum(ours.raw.numpy(), 0), (width, height)))
    assert maxdiff(torch.from_numpy(as_theirs), theirs) < 1e-5


def test_pytorch_grad_cam_reads_activations_overwritten_by_a_later_in_place_op():
    """Peer deviation: at a target layer followed by an in-place op (layer4.1.bn2, then ``out += identity``
    and an in-place ReLU), pytorch-grad-cam stores ``output.cpu().detach()``, which on CPU shares memory
    with the output, so it computes the map from the block's output instead of bn2's. Its gradients are
    right. Our split runs in-place ops out of place, so our map is the reference computed from bn2's output."""
    model, images = net("resnet18")
    target = "layer4.1.bn2"
    ours = make_method("gradcam", model, target).explain(images)
    a, g, _ = reference(model, target, images, ours.targets)
    torch.testing.assert_close(ours.raw, weighted(g.mean((2, 3)), a), rtol=1e-4, atol=1e-5)
    with pgc.GradCAM(model=model, target_layers=[model.get_submodule(target)]) as cam:
        theirs = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in ours.targets])
        stored = cam.activations_and_grads.activations[0]
        stored_grad = cam.activations_and_grads.gradients[0]
    model.zero_grad(set_to_none=True)
    block_out = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: block_out.setdefault("y", o.detach().clone()))
    with torch.no_grad():
        model(images)
    handle.remove()
    torch.testing.assert_close(stored, block_out["y"])  # bn2's output, after `+= identity` and ReLU
    torch.testing.assert_close(stored_grad, g)
    assert maxdiff(ours.maps, torch.from_numpy(theirs)) > 0.1


# ----------------------------------------------------------------------------------------------------
# parity with TorchCAM, and its deviations
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"), [("gradcam", tc.GradCAM), ("xgradcam", tc.XGradCAM), ("layercam", tc.LayerCAM)]
)
def test_agrees_with_torchcam(name, cls):
    model, images = net("resnet18")
    ours = make_method(name, model, "layer4").explain(images)
    (theirs,) = torchcam_cams(cls, model, "layer4", images, ours.targets)
    assert maxdiff(minmax(torch.relu(ours.raw)), theirs) < 1e-4
    assert maxdiff(ours.maps, minmax(upsample(theirs, images.shape[-2:]))) < 1e-4


def test_cam_agrees_with_torchcam_which_skips_the_relu():
    """TorchCAM's CAM min-max normalises sum_k W_ck A_k without ReLU (as Zhou et al.'s released code; its
    docstring shows the ReLU). We apply the ReLU, as to every method: our raw map, min-max normalised
    without ReLU, is theirs; ours with ReLU differs wherever the raw map has negative values."""
    model, images = net("resnet18")
    ours = make_method("cam", model, "layer4").explain(images)
    (theirs,) = torchcam_cams(tc.CAM, model, "layer4", images, ours.targets, fc_layer="fc")
    assert maxdiff(minmax(ours.raw), theirs) < 1e-5
    negative = ours.raw.flatten(1).amin(1) < 0
    assert negative.any()
    assert maxdiff(minmax(torch.relu(ours.raw))[negative], theirs[negative]) > 0.02


def test_cam_equals_gradcam_on_a_gap_linear_head():
    model, images = net("resnet18")
    cam = make_method("cam", model, "layer4").explain(images)
    grad = make_method("gradcam", model, "layer4").explain(images, cam.targets)
    assert torch.equal(cam.targets, grad.targets)
    hw = cam.raw.shape[-2] * cam.raw.shape[-1]  # dy_c/dA_k = W_ck / hw under global average pooling
    torch.testing.assert_close(grad.raw * hw, cam.raw, rtol=1e-4, atol=1e-5)
    assert maxdiff(grad.maps, cam.maps) < 1e-4
    assert cam.passes == Passes(forward=1, backward=0)


@pytest.mark.parametrize(("arch", "layer"), [("vgg11_bn", "features.27"), ("mobilenet_v3_small", "features.12")])
def test_cam_refuses_a_head_that_is_not_gap_and_one_linear_layer(arch, layer):
    model, _ = net(arch)
    with pytest.raises(MethodError, match=rf"cam needs global average pooling and one linear layer .* {layer}") as err:
        make_method("cam", model, layer)
    assert "classifier.0" in str(err.value) and "method=gradcam" in str(err.value)
    with pytest.raises(MethodError, match="cam needs global average pooling"):
        make_method("cam", torchvision.models.resnet18(num_classes=4), "layer3")


def test_torchcam_gradcampp_alpha_stays_g_squared():
    """Peer deviation: TorchCAM 0.5's GradCAMpp divides ``alpha[mask]``, a copy made by boolean indexing,
    so alpha stays g^2 and its weights are sum_ij g^2 ReLU(g) = sum_ij ReLU(g)^3 (its denominator is
    never used). Ours is the paper's eq. 19 (and pytorch-grad-cam's, see the parity tests)."""
    model, images = net("resnet18")
    ours = make_method("gradcampp", model, "layer4").explain(images)
    (theirs,) = torchcam_cams(tc.GradCAMpp, model, "layer4", images, ours.targets)
    a, g, _ = reference(model, "layer4", images, ours.targets)
    bugged = weighted((torch.relu(g) ** 3).sum((2, 3)), a)
    assert maxdiff(torchcam_normalise(bugged), theirs) < 1e-5
    paper = weighted(gradcampp_weights(a, g, g**2, g**3), a)
    torch.testing.assert_close(ours.raw, paper, rtol=1e-4, atol=1e-5)
    assert maxdiff(minmax(torch.relu(ours.raw)), theirs) > 0.1


class ReplayNoise:
    """Stands in for TorchCAM's noise distribution: hands out given noise tensors, one per call."""

    def __init__(self, noise):
        self.noise = list(noise)

    def sample(self, size):
        noise = self.noise.pop(0)
        assert noise.shape == size
        return noise


def torchcam_smooth(model, images, targets, noise):
    with tc.SmoothGradCAMpp(model, "layer4", num_samples=len(noise)) as extractor:
        extractor._distrib = ReplayNoise(noise)
        with torch.no_grad():
            model(images)  # TorchCAM stores the input and the clean activations here
        (cam,) = extractor(class_idx=[int(t) for t in targets])
    model.zero_grad(set_to_none=True)
    return cam.detach()


def test_torchcam_gradcampp_denominator_sums_g_cubed_times_a():
    """Peer deviation: TorchCAM's alpha denominator is 2 g^2 + sum_ab g^3(a, b) A(a, b) instead of the paper's
    2 g^2(i, j) + g^3(i, j) sum_ab A(a, b). Its GradCAMpp never reaches it (alpha bug), its SmoothGradCAMpp
    does: without noise it is Grad-CAM++ with that denominator, and it differs from ours (sigma = 0)."""
    model, images = net("resnet18")
    ours = make_method("smoothgradcampp", model, "layer4", sigma=0.0, samples=2).explain(images)
    theirs = torchcam_smooth(model, images, ours.targets, torch.zeros(2, *images.shape))
    a, g, _ = reference(model, "layer4", images, ours.targets)
    alpha = g**2 / (2 * g**2 + (g**3 * a).sum((2, 3), keepdim=True) + 1e-8)
    as_torchcam = weighted((alpha * torch.relu(g)).sum((2, 3)), a)
    assert maxdiff(torchcam_normalise(as_torchcam), theirs) < 1e-5
    torch.testing.assert_close(ours.raw, weighted(gradcampp_weights(a, g, g**2, g**3), a), rtol=1e-4, atol=1e-5)
    assert maxdiff(minmax(torch.relu(ours.raw)), theirs) > 0.01


def test_torchcam_smoothgradcampp_maps_the_last_noisy_sample():
    """Peer deviation: TorchCAM's SmoothGradCAMpp averages g^2 and g^3 over the noisy samples, but takes
    ReLU(g) in the weights and the activations of the map from the last noisy sample only (and the clean
    activations in alpha). Ours averages A and g^p over all samples (Omeiza et al.). Both see the same
    noise here: TorchCAM's distribution replays ours."""
    model, images = net("resnet18")
    n, sigma = 4, 0.3
    method = make_method("smoothgradcampp", model, "layer4", samples=n, sigma=sigma, seed=0)
    noise = sigma * torch.randn((n, *images.shape), generator=torch.Generator().manual_seed(0))
    ours = method.explain(images)

    clean, _, targets = reference(model, "layer4", images, ours.targets)
    samples = [reference(model, "layer4", images + noise[i], targets)[:2] for i in range(n)]
    acts = torch.stack([s[0] for s in samples])
    grads = torch.stack([s[1] for s in samples])
    g1, g2, g3 = grads.mean(0), (grads**2).mean(0), (grads**3).mean(0)
    paper_alpha = torch.where(g1 != 0, g2 / (2 * g2 + acts.mean(0).sum((2, 3), keepdim=True) * g3 + 1e-6), 0.0)
    paper = weighted((paper_alpha * torch.relu(g1)).sum((2, 3)), acts.mean(0))
    torch.testing.assert_close(ours.raw, paper, rtol=1e-4, atol=1e-5)

    theirs = torchcam_smooth(model, images, targets, noise)
    alpha = g2 / (2 * g2 + (g3 * clean).sum((2, 3), keepdim=True) + 1e-8)
    as_torchcam = weighted((alpha * torch.relu(grads[-1])).sum((2, 3)), acts[-1])
    assert maxdiff(torchcam_normalise(as_torchcam), theirs) < 1e-5
    assert maxdiff(minmax(torch.relu(ours.raw)), theirs) > 0.02


# ----------------------------------------------------------------------------------------------------
# Smooth Grad-CAM++: seeding and batching
# ----------------------------------------------------------------------------------------------------


def test_smoothgradcampp_is_seeded_and_runs_the_noisy_copies_in_chunks_the_device_settled_on():
    model, images = net("resnet18")
    images = images[:2]
    batches, head, backward = [], [], []
    handles = [
        model.conv1.register_forward_pre_hook(lambda m, inputs: batches.append(inputs[0].shape[0])),
        model.fc.register_forward_pre_hook(lambda m, inputs: head.append(torch.is_grad_enabled())),
        model.fc.register_full_backward_hook(lambda m, grad_in, grad_out: backward.append(grad_out[0].shape[0])),
    ]
    try:
        method = make_method("smoothgradcampp", model, "layer4", samples=5, seed=1, batch_size=None)  # probed
        first = method.explain(images)
        # nothing probed yet: the clean batch, then the 5 noisy copies of both images, a batch a pass
        assert batches == [2, 2, 2, 2, 2, 2]
        # the clean pass only predicts: one backward pass per noisy pass (as declared: 5B)
        assert head == [False] + [True] * 5 and backward == [2] * 5
        batches.clear()
        method.engine.scorer.batch_size = 8  # a device whose full passes run best 8 rows at a time
        chunked = make_method("smoothgradcampp", model, "layer4", samples=5, seed=1, batch_size=None)
        chunked.engine = method.engine
        torch.testing.assert_close(chunked.explain(images).raw, first.raw, rtol=1e-5, atol=1e-6)
        assert batches == [2, 8, 2]  # the same noise, 10 noisy rows in passes of 8 and 2
        method.engine.scorer.batch_size = None
        second = method.explain(images)  # the method's generator goes on from call to call within a batch
    finally:
        for handle in handles:
            handle.remove()
    again = make_method("smoothgradcampp", model, "layer4", samples=5, seed=1).explain(images)
    other = make_method("smoothgradcampp", model, "layer4", samples=5, seed=2).explain(images)
    assert torch.equal(again.maps, first.maps) and torch.equal(again.raw, first.raw)
    assert maxdiff(other.maps, first.maps) > 1e-3
    assert maxdiff(second.maps, first.maps) > 1e-3
    assert first.passes == Passes(forward=6, backward=5)
    with pytest.raises(MethodError, match="samples >= 1 and sigma >= 0"):
        make_method("smoothgradcampp", model, "layer4", sigma=-0.1)


# ----------------------------------------------------------------------------------------------------
# LayerCAM: multi-layer fusion
# ----------------------------------------------------------------------------------------------------


def test_layercam_fusion_of_three_layers():
    """Fusion as in Jiang et al.: per layer L / max L, scaled to tanh(2 L / max L) for the shallower layers,
    bilinear upsampling to the finest map, element-wise max; the per-layer maps are the single-layer
    method's (the gradients at each layer do not depend on how the model is split)."""
    model, images = net("resnet18")
    layers = ["layer2", "layer3", "layer4"]
    fused = make_method("layercam", model, layers).explain(images)
    singles = [make_method("layercam", model, layer).explain(images, fused.targets) for layer in layers]
    size = singles[0].raw.shape[-2:]
    relative = [torch.relu(s.raw) / torch.relu(s.raw).flatten(1).amax(1)[:, None, None] for s in singles]
    scaled = [torch.tanh(2 * r) for r in relative[:2]] + [relative[2]]
    stacked = torch.stack([upsample(m, size) for m in scaled])
    expected = stacked.amax(0)
    assert fused.raw.shape == (4, *size) == (4, 10, 12)
    torch.testing.assert_close(fused.raw, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.maps, finalise(expected, images.shape[-2:]), rtol=0, atol=1e-4)
    winners = stacked.argmax(0)
    assert all((winners == layer).any() for layer in range(3)), "every layer shapes the fused map somewhere"
    # the given order of the layers does not matter
    shuffled = make_method("layercam", model, ["layer4", "layer2", "layer3"]).explain(images, fused.targets)
    torch.testing.assert_close(shuffled.raw, fused.raw)


def test_torchcam_layercam_fusion_scales_the_deepest_map_too():
    """Peer deviation: TorchCAM's per-layer LayerCAM maps are ours (min-max normalised), but its
    ``fuse_cams`` applies tanh(2 x) to every map, the deepest one included, and to min-max rather than
    L / max L maps. The paper (and ours) keeps the deepest map as L / max L, so the fused maps differ."""
    model, images = net("resnet18")
    layers = ["layer2", "layer3", "layer4"]
    ours = make_method("layercam", model, layers).explain(images)
    theirs = torchcam_cams(tc.LayerCAM, model, layers, images, ours.targets)
    for layer, cam in zip(layers, theirs, strict=True):
        single = make_method("layercam", model, layer).explain(images, ours.targets)
        assert maxdiff(minmax(torch.relu(single.raw)), cam) < 1e-4
    fused = tc.LayerCAM.fuse_cams(theirs)
    size = theirs[0].shape[-2:]
    as_torchcam = torch.stack([upsample(torch.tanh(2 * cam), size) for cam in theirs]).amax(0)
    assert maxdiff(fused, as_torchcam) < 1e-5
    assert maxdiff(ours.raw, fused) > 0.03  # tanh(2) = 0.964 where ours is 1
