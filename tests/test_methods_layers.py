"""Poly-CAM (multi-layer, masked forwards) and Relevance-CAM (LRP with zennit).

* Poly-CAM against a line-by-line transcription of the authors' code (aenglebert/polycam,
  ``polycam/core.py`` and ``polycam/polycam.py``: hooks on the full model, one image at a time,
  numpy percentiles) on a stub, for PCAM+, PCAM- and PCAM+-; its percentile normalisation against
  numpy; its default layers through the runner's preflight; the declared passes.
* Relevance-CAM against a hand-written LRP (the authors' ``relprop`` rules: alpha1-beta0 for
  convolutions and linear layers, batch norm and ReLU passed, proportional average pooling and
  residual sum, their contrastive output relevance) on a small conv net with batch norm and a
  ResNet BasicBlock; relevance conservation on ResNet-18, a VGG-like stub and MobileNetV3-small
  (whose inverted residual sums and squeeze-excitation gates the plain gradient does not conserve);
  zennit's batch-norm folding vs the authors' pass-through; the model left exactly as it was.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import make_method
from hydra import compose, initialize_config_dir
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock
from zennit.composites import ExcitationBackprop
from zennit.rules import Pass
from zennit.torchvision import ResNetCanonizer
from zennit.types import Activation

from cambench.app.config import validate
from cambench.app.run import preflight
from cambench.methods import MethodError
from cambench.methods.base import minmax, weighted_sum
from cambench.methods.polycam import percentile_normalise
from cambench.methods.relevancecam import after_target, composite, safe_denominator
from cambench.models.engine import Passes

CONF = str(Path(__file__).resolve().parent.parent / "conf")


def maxdiff(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------------------------------
# Poly-CAM
# ----------------------------------------------------------------------------------------------------


def poly_stub() -> nn.Module:
    """Three stride-2 conv + ReLU stages (16, 8 and 4 px at 32 px), GAP, linear; channel 0 of the
    second stage is dead (zero weights, bias -1), so its weight is never scored."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()
    with torch.no_grad():
        model[2].weight[0] = 0
        model[2].bias[0] = -1
        model[8].weight.mul_(5)  # sharper probabilities
    return model


POLY_LAYERS = ["1", "3", "5"]


def authors_normalize(t: Tensor, outlier_perc: float = 0.1) -> Tensor:
    """polycam/core.py ``_PolyCAM.normalize``, transcribed."""
    eps = torch.ones(*t.shape[:-2], 1, 1) * 1e-12
    lo = np.percentile(t.detach().flatten(-2).numpy(), outlier_perc, axis=-1)
    lo = torch.tensor(lo).view([*t.shape[:-2], 1, 1]).float()
    hi = np.percentile(t.detach().flatten(-2).numpy(), 100 - outlier_perc, axis=-1)
    hi = torch.tensor(hi).view([*t.shape[:-2], 1, 1]).float()
    normalized = (t - lo) / torch.maximum(hi, eps)
    return torch.maximum(torch.minimum(normalized, torch.ones(1)), torch.zeros(1))


def authors_polycam(model: nn.Module, layers: list[str], image: Tensor, class_idx: int, variant: str) -> Tensor:
    """The authors' PCAMp / PCAMm / PCAMpm ``__call__(image, class_idx)[-1]`` for one (1, 3, H, W) image, as a
    plain loop: hooks store the target layers' outputs, scores are softmax probabilities, batch_size 8."""
    activations = {}
    hooks = [
        model.get_submodule(layer).register_forward_hook(lambda m, i, o, layer=layer: activations.update({layer: o}))
        for layer in layers
    ]
    with torch.no_grad():
        model(image)
    for hook in hooks:
        hook.remove()

    def score(x: Tensor) -> Tensor:
        return F.softmax(model(x), dim=1)[:, class_idx].view(-1, 1, 1)

    prev_cam = None
    with torch.no_grad():
        baseline_score = score(image)
        for layer in reversed(layers):
            a = activations[layer]
            masks = authors_normalize(a)
            if variant == "minus":
                masks = 1 - masks
            masks = F.interpolate(masks, image.shape[-2:], mode="bilinear").transpose(0, 1)
            weights = torch.zeros(masks.shape[0], 1, 1)
            for idx in range(math.ceil(weights.shape[0] / 8)):
                sl = slice(idx * 8, min((idx + 1) * 8, weights.shape[0]))
                if variant == "plus":
                    weights[sl] = score(masks[sl] * image)
                elif variant == "minus":
                    weights[sl] = baseline_score - score(masks[sl] * image)
                else:
                    weights[sl] = score(image * masks[sl]) + baseline_score - score(image * (1 - masks[sl]))
            if variant != "plus":
                weights = torch.relu(weights)
            activation_map = torch.relu((a * weights.unsqueeze(0)).nansum(1).unsqueeze(0))
            if prev_cam is None:
                prev_cam = activation_map
            else:  # local_relevance_normalization, then the product with the coarser map
                norm_factor = F.interpolate(activation_map, prev_cam.shape[-2:], mode="bilinear")
                norm_factor = F.interpolate(norm_factor, activation_map.shape[-2:], mode="bilinear")
                activation_map = activation_map / torch.maximum(norm_factor, torch.tensor(1e-12))
                prev_cam = activation_map * F.interpolate(prev_cam, activation_map.shape[-2:], mode="bilinear")
            prev_cam = torch.relu(prev_cam)
    return F.interpolate(authors_normalize(prev_cam), image.shape[-2:], mode="bilinear")[0, 0]


@pytest.mark.parametrize("variant", ["plus", "minus", "plusminus"])
def test_polycam_matches_the_authors_code(variant):
    model = poly_stub()
    images = torch.randn(2, 3, 32, 32)
    method = make_method("polycam", model, POLY_LAYERS, variant=variant, batch_size=16)
    for targets in (None, torch.tensor([4, 0])):
        out = method(images, targets)
        assert out.raw.shape == (2, 16, 16)  # the finest level
        for i in range(2):
            reference = minmax(authors_polycam(model, POLY_LAYERS, images[i : i + 1], int(out.targets[i]), variant))
            assert maxdiff(out.maps[i], reference) < 1e-4  # measured: below 2e-6
    # one forward for the prediction, then every channel of every layer (4 + 6 + 8) once (twice for PCAM+-)
    assert out.passes == Passes(forward=1 + 18 * (2 if variant == "plusminus" else 1))


def test_polycam_scores_all_layers_in_one_call_without_dead_channels(monkeypatch):
    model = poly_stub()
    method = make_method("polycam", model, POLY_LAYERS)
    calls = []
    score = method.engine.scorer.score

    def counting(targets, build, **kwargs):
        calls.append(len(targets))
        return score(targets, build, **kwargs)

    monkeypatch.setattr(method.engine.scorer, "score", counting)
    images = torch.randn(2, 3, 32, 32)
    fw = method.forward(images)
    assert (fw.activations[1][:, 0] == 0).all()
    method.raw_map(fw)
    live = sum(int((a != 0).flatten(2).any(2).sum()) for a in fw.activations)
    assert calls == [live] and live < 2 * 18  # every layer's rows in one call; the dead channel is not scored
    # one layer: the map is the percentile-normalised ReLU(sum_k w_k A_k) (Score-CAM with p_c(x M_k) and N)
    single = make_method("polycam", model, ["5"])
    fw = single.forward(images)
    weights = single.weights(fw, fw.activations)[0]
    assert torch.equal(single.raw_map(fw), percentile_normalise(torch.relu(weighted_sum(weights, fw.activations[0]))))


def test_polycam_max_channels_scores_the_most_active_channels_only():
    model = poly_stub()
    images = torch.randn(2, 3, 32, 32)
    full = make_method("polycam", model, POLY_LAYERS, batch_size=16)(images)
    capped = make_method("polycam", model, POLY_LAYERS, batch_size=16, max_channels=8)(images)  # 8 >= every K_l
    torch.testing.assert_close(capped.maps, full.maps, rtol=0, atol=1e-6)
    method = make_method("polycam", model, POLY_LAYERS, max_channels=2)
    fw = method.forward(images)
    for a, w in zip(fw.activations, method.weights(fw, fw.activations), strict=True):
        top = a.mean((2, 3)).topk(2, dim=1).indices
        assert ((w != 0).sum(1) == 2).all() and (w.gather(1, top) > 0).all()  # PCAM+ weights are probabilities
    assert method(images).passes == Passes(forward=1 + 3 * 2)
    with pytest.raises(MethodError, match=r"method\.max_channels must be >= 0"):
        make_method("polycam", model, POLY_LAYERS, max_channels=-1)


def test_percentile_normalise_matches_numpy():
    torch.manual_seed(1)
    maps = torch.relu(torch.randn(4, 3, 7, 9)) ** 2
    maps[0, 0] = 0.5  # flat: (x - x) / x = 0
    maps[1, 1] = -torch.rand(7, 9)  # all negative: divided by 1e-12, clipped
    assert maxdiff(percentile_normalise(maps), authors_normalize(maps)) < 1e-6
    assert (percentile_normalise(maps[:1, :1]) == 0).all()


def test_polycam_variant_is_checked():
    with pytest.raises(MethodError, match=r"method.variant must be one of plus \(PCAM\+\), minus"):
        make_method("polycam", poly_stub(), POLY_LAYERS, variant="both")


@pytest.mark.parametrize(
    ("arch", "layers"),
    [
        # the authors' generate_explanations.py (line 93) and utils.find_layer_list on VGG16
        ("vgg16", ["features.3", "features.8", "features.15", "features.22", "features.29"]),
        ("vgg11_bn", ["features.2", "features.6", "features.13", "features.20", "features.27"]),
        ("resnet50", ["relu", "layer1", "layer2", "layer3", "layer4"]),  # generate_explanations.py line 88
        ("mobilenet_v3_large", ["features.1", "features.3", "features.6", "features.12", "features.16"]),
        ("mobilenet_v3_small", ["features.0", "features.1", "features.3", "features.8", "features.12"]),
    ],
)
def test_polycam_default_layers_through_preflight(arch, layers):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = validate(compose("config", overrides=[f"model={arch}", "method=polycam"]))
    assert cfg.model.target_layer is None
    assert preflight(cfg) == layers
    # one layer per resolution, finest first: the last layer before each change (find_layer_list's rule)
    with torch.device("meta"):
        model = torchvision.models.get_model(arch, num_classes=10).eval()
    sizes = {}
    hooks = [
        model.get_submodule(p).register_forward_hook(lambda m, i, o, p=p: sizes.update({p: o.shape[-1]}))
        for p in layers
    ]
    model(torch.zeros(1, 3, 224, 224, device="meta"))
    for h in hooks:
        h.remove()
    assert [sizes[p] for p in layers] == ([224, 112, 56, 28, 14] if arch.startswith("vgg") else [112, 56, 28, 14, 7])


# ----------------------------------------------------------------------------------------------------
# Relevance-CAM
# ----------------------------------------------------------------------------------------------------


def lrp_stub(negative_gamma: bool = False) -> nn.Module:
    """conv -> batch norm -> ReLU (the target, "2") -> a ResNet BasicBlock (stride 2, with a downsample
    branch) -> GAP -> linear, with random batch-norm statistics and positive scales (one negative on request)."""
    torch.manual_seed(0)
    downsample = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        BasicBlock(4, 8, stride=2, downsample=downsample),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.copy_(0.1 * torch.randn_like(bn.running_mean))
            bn.running_var.copy_(0.5 + torch.rand_like(bn.running_var))
            bn.weight.copy_(0.5 + torch.rand_like(bn.weight))
            bn.bias.copy_(0.1 * torch.randn_like(bn.bias))
        if negative_gamma:
            model[3].bn1.weight[0] = -1.0
    return model


def safe_divide(a: Tensor, b: Tensor) -> Tensor:
    """modules/layers.py ``safe_divide``."""
    return a / (b + b.eq(0).type(b.type()) * 1e-9) * b.ne(0).type(b.type())


def zplus(module: nn.Module, x: Tensor, r: Tensor) -> Tensor:
    """modules/layers.py ``Conv2d.relprop`` / ``Linear.relprop`` with alpha = 1 (beta = 0), bias left out:
    R_i = x+_i sum_j w+_ij s_j + x-_i sum_j w-_ij s_j with s_j = R_j / z_j, z_j = sum_i (x+_i w+_ij + x-_i w-_ij)."""
    xp, xn = x.clamp(min=0).requires_grad_(True), x.clamp(max=0).requires_grad_(True)
    wp, wn = module.weight.clamp(min=0), module.weight.clamp(max=0)
    if isinstance(module, nn.Conv2d):
        zp, zn = (F.conv2d(i, w, None, module.stride, module.padding) for i, w in ((xp, wp), (xn, wn)))
    else:
        zp, zn = F.linear(xp, wp), F.linear(xn, wn)
    s = safe_divide(r, zp + zn)
    gp, gn = torch.autograd.grad([zp, zn], [xp, xn], [s, s])
    return (xp * gp + xn * gn).detach()


def reference_relevance(model: nn.Module, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """LRP by hand on ``lrp_stub``, as the authors' relprop: (relevance, activation) at its ReLU "2"."""
    conv, bn, relu, block, _, _, fc = model
    with torch.no_grad():
        t = relu(bn(conv(x)))
        h = block.relu(block.bn1(block.conv1(t)))
        o = block.bn2(block.conv2(h))
        d = block.downsample(t)
        y = torch.relu(o + d)
        p = y.mean((2, 3))
        logits = fc(p)
        r = torch.full_like(logits, -1 / logits.shape[1]).scatter_(1, targets[:, None], 1.0)  # CLRP
    r = zplus(fc, p, r)
    r = y * safe_divide(r, y.sum((2, 3)))[:, :, None, None]  # AdaptiveAvgPool2d.relprop: proportional
    r_o, r_d = o * safe_divide(r, o + d), d * safe_divide(r, o + d)  # relu2 passes; Add.relprop: proportional
    r_t = zplus(block.conv1, t, zplus(block.conv2, h, r_o))  # bn2, relu1 and bn1 pass relevance through
    return r_t + zplus(block.downsample[0], t, r_d), t  # the downsample's batch norm passes; Clone: sum


def test_relevancecam_matches_hand_written_lrp_with_batch_norm_and_residual_block():
    model = lrp_stub()
    images = torch.randn(3, 3, 16, 16)
    method = make_method("relevancecam", model, "2")
    out = method(images, torch.tensor([0, 3, 4]))
    reference, activation = reference_relevance(model, images, out.targets)
    relevance = method.relevance(images, out.targets)
    scale = reference.abs().max().item()
    assert maxdiff(relevance, reference) < 1e-5 * scale  # measured: 0 (the same operations)
    torch.testing.assert_close(out.raw, weighted_sum(reference.sum((2, 3)), activation), rtol=1e-5, atol=1e-6)
    assert out.passes == Passes(forward=1, backward=2, tail=2)  # z+: two forwards and backwards of each layer
    # the one LRP pass gives the split's A and the model's logits (its hooks change only the backward pass)
    with torch.no_grad():
        (carry, *_), logits = method.engine.split.forward(images)
    torch.testing.assert_close(method.forward(images).activations[-1], carry[0], rtol=0, atol=0)
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=0)
    assert out.targets.tolist() == [0, 3, 4]


def folding_composite() -> ExcitationBackprop:
    """The same rules with zennit's canonical batch-norm folding (ResNetCanonizer = SequentialMergeBatchNorm +
    the residual-sum canonizers) instead of passing relevance through batch norms."""
    return ExcitationBackprop(
        stabilizer=safe_denominator,
        layer_map=[(Activation, Pass())],
        zero_params="bias",
        canonizers=[ResNetCanonizer()],
    )


def test_batch_norm_folding_differs_from_the_authors_pass_through_only_for_negative_scales():
    images = torch.randn(2, 3, 16, 16)
    targets = torch.tensor([1, 2])
    for negative, equal in ((False, True), (True, False)):
        model = lrp_stub(negative_gamma=negative)
        method = make_method("relevancecam", model, "2")
        ours = method.relevance(images, targets)
        method.composite = folding_composite()
        folded = method.relevance(images, targets)
        reference, _ = reference_relevance(model, images, targets)
        assert maxdiff(ours, reference) < 1e-5 * reference.abs().max()
        # folded weights w gamma / sigma: z+ picks the same weights while gamma > 0, the other sign where gamma < 0
        difference = maxdiff(folded, ours) / ours.abs().max().item()  # measured: 5e-6 (rounding), 0.04
        assert difference < 1e-4 if equal else difference > 1e-2


def vgg_like() -> nn.Module:
    """VGG's layers (conv, batch norm, ReLU, max pooling, 7 x 7 adaptive pooling, a ReLU / Dropout classifier)
    at a small width; torchvision's VGG class itself runs in test_methods_run."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(7),
        nn.Flatten(),
        nn.Linear(32 * 49, 64),
        nn.ReLU(inplace=True),
        nn.Dropout(),
        nn.Linear(64, 10),
    )


def unhooked(model: nn.Module) -> bool:
    return all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or "forward" in m.__dict__)
        for m in model.modules()
    )


@pytest.mark.parametrize(
    ("arch", "layer", "size"),
    [("resnet18", "layer3", 32), ("vgg_like", "2", 32), ("mobilenet_v3_small", "features.9", 48)],
)
def test_relevancecam_conserves_relevance_and_leaves_the_model_as_it_was(arch, layer, size):
    torch.manual_seed(0)
    model = (vgg_like() if arch == "vgg_like" else torchvision.models.get_model(arch, num_classes=10)).eval()
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        before = model(images)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    parameters = dict(model.named_parameters())
    names = [name for name, _ in model.named_modules()]
    method = make_method("relevancecam", model, layer)
    out = method(images)
    # every module after the target layer has a rule that conserves relevance: sum R = 1 - (N - 1) / N
    relevance = method.relevance(images, out.targets)
    torch.testing.assert_close(relevance.sum((1, 2, 3)), torch.full((2,), 0.1), rtol=1e-4, atol=0)
    with torch.no_grad():
        after = model(images)
    assert torch.equal(before, after) and unhooked(model)
    assert [name for name, _ in model.named_modules()] == names
    assert [k for k, _ in model.named_parameters()] == list(parameters)
    assert all(p is parameters[k] for k, p in model.named_parameters())
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    if arch == "mobilenet_v3_small":
        # without our canonizer the residual sum hands each branch all of the relevance, and the
        # squeeze-excitation gate scales it and feeds its pooling branch: relevance is not conserved
        method.composite = ExcitationBackprop(
            stabilizer=safe_denominator, layer_map=[(Activation, Pass()), (nn.BatchNorm2d, Pass())], zero_params="bias"
        )
        plain = method.relevance(images, out.targets).sum((1, 2, 3))
        assert ((plain - 0.1).abs() > 0.01).all()
        # a layer inside the gate gets no relevance at all: a clear error, and the model is left as it was
        with pytest.raises(MethodError, match="inside a squeeze-excitation gate"):
            make_method("relevancecam", model, "features.9.block.2.fc1")(images)
        assert unhooked(model) and torch.equal(model(images), before)


@pytest.mark.parametrize(
    ("arch", "layer", "size"),
    [("resnet18", "layer3.1.conv2", 32), ("resnet18", "layer4", 32), ("mobilenet_v3_small", "features.9.block.0", 48)],
)
def test_relevancecam_canonizes_only_the_blocks_after_the_target_with_the_same_relevance(arch, layer, size):
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, num_classes=10).eval()
    images = torch.randn(2, 3, size, size)
    method = make_method("relevancecam", model, layer)
    blocks = after_target(method.engine.split)
    if arch == "resnet18":  # the target's own block and every block after it, none before
        expected = {"layer3.1", "layer4.0", "layer4.1"} if layer.startswith("layer3") else set()
        assert {name for name in blocks if name.count(".") == 1} == expected
    else:
        assert "features.9" in blocks and "features.8" not in blocks
    targets = method(images).targets
    ours = method.relevance(images, targets)
    method.composite = composite()  # every block canonized
    everywhere = method.relevance(images, targets)
    # ResNet: exact. MobileNetV3: the canonized gate computes x + x (s - 1), not the model's x s, so a
    # canonized block before the target shifts A by rounding (measured: 7e-10 where the largest |R| is 5e-4)
    atol = 0 if arch == "resnet18" else 1e-5 * everywhere.abs().max().item()
    torch.testing.assert_close(ours, everywhere, rtol=0, atol=atol)


def test_relevancecam_rejects_models_without_rules():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(
        MethodError,
        match=r"relevancecam has LRP rules for torchvision ResNet, VGG and MobileNetV3 .* "
        r"module 1 is a SiLU",
    ):
        make_method("relevancecam", model, "0")
