"""The model split at target layers: exact reproduction of the model, side tensors, gradients that
start at the target layer, in-place safety, multi-layer chains, and the hook fallback."""

import pytest
import torch
import torchvision
from torch import nn

from cambench.models.split import HookSplit, SplitError, SplitModel, split_model


@pytest.mark.parametrize(
    ("arch", "layer", "side_shapes"),
    [
        ("resnet18", "layer4", []),
        ("resnet18", "layer3", []),
        ("resnet18", "layer4.1.conv2", [(512, 3, 3)]),  # the identity branch of block layer4.1
        ("resnet50", "layer4", []),
        ("resnet50", "layer3", []),
        ("resnet50", "layer4.0.conv2", [(2048, 3, 3)]),  # the downsample branch, computed once in the head
        ("vgg16", "features.29", []),
        ("mobilenet_v3_small", "features.12", []),
        ("mobilenet_v3_small", "features.6.block.1", [(40, 6, 6)]),  # inside an inverted residual
    ],
)
def test_split_reproduces_the_model_exactly(arch, layer, side_shapes):
    model = torchvision.models.get_model(arch, num_classes=10).eval()
    split = SplitModel(model, [layer])
    images = torch.randn(2, 3, 96, 96)
    assert split.verify(images) == 0.0  # tail(head(x)) == model(x), bit for bit in fp32
    (carry,), _ = split.forward(images)
    assert [tuple(s.shape[1:]) for s in carry[1:]] == side_shapes
    with torch.no_grad():
        captured = {}
        model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.setdefault("a", o.clone()))
        model(images)
    torch.testing.assert_close(carry[0], captured["a"], rtol=0, atol=0)


def test_resnet18_inner_split_names_the_residual_input_as_the_issue_checked():
    split = SplitModel(torchvision.models.resnet18().eval(), ["layer4.1.conv2"])
    inputs = [n.name for n in split.stages[1].graph.nodes if n.op == "placeholder"]
    assert inputs == ["layer4_1_conv2", "layer4_0_relu_1"]


def test_gradients_start_at_the_target_layer_and_match_a_full_backward():
    model = torchvision.models.resnet18(num_classes=4).eval()
    split = SplitModel(model, ["layer4.0.bn1"])  # followed by an in-place ReLU in torchvision
    images = torch.randn(2, 3, 64, 64)
    grad_modes = []
    model.layer3[1].conv2.register_forward_pre_hook(lambda m, i: grad_modes.append(torch.is_grad_enabled()))
    with torch.no_grad():  # the caller's mode does not matter: the split turns autograd on after the target
        (carry,), logits = split.forward(images, grad_from=0)
    (grad,) = torch.autograd.grad(logits[:, 1].sum(), carry[0])
    assert grad_modes == [False]
    # reference: full autograd through the model, gradient taken at the same activation; the hook hands
    # the model a copy, so torchvision's in-place ReLU after bn1 cannot rewrite the captured tensor
    captured = {}

    def keep(module, inputs, output):
        captured["a"] = output
        return output.clone()

    model.layer4[0].bn1.register_forward_hook(keep)
    with torch.enable_grad():
        out = model(images.clone().requires_grad_(True))
        (expected,) = torch.autograd.grad(out[:, 1].sum(), captured["a"])
    torch.testing.assert_close(grad, expected)


def test_tail_passes_never_modify_the_activation_they_are_given():
    split = SplitModel(torchvision.models.resnet18(num_classes=4).eval(), ["layer4.0.bn1"])
    (carry,), logits = split.forward(torch.randn(2, 3, 64, 64))
    before = [t.clone() for t in carry]
    for _ in range(2):
        torch.testing.assert_close(split.tail(0, carry), logits, rtol=0, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(before, carry, strict=True))


def test_tail_accepts_expanded_side_tensors():
    split = SplitModel(torchvision.models.resnet18(num_classes=4).eval(), ["layer4.1.conv2"])
    (carry,), logits = split.forward(torch.randn(1, 3, 64, 64))
    activation, side = carry
    many = split.tail(0, (activation.expand(5, -1, -1, -1), side.expand(5, -1, -1, -1)))
    torch.testing.assert_close(many, logits.expand(5, -1))


def test_multi_layer_chain_and_its_errors():
    model = torchvision.models.resnet18(num_classes=4).eval()
    split = SplitModel(model, ["layer4", "layer2", "layer3"])  # any order: sorted along the network
    carries, logits = split.forward(torch.randn(1, 3, 64, 64), grad_from=0)
    assert [c[0].shape[1] for c in carries] == [128, 256, 512]
    grads = torch.autograd.grad(logits[:, 0].sum(), [c[0] for c in carries])
    assert all(g.abs().sum() > 0 for g in grads)
    with pytest.raises(SplitError, match="parallel branches"):
        SplitModel(model, ["layer4.0.downsample", "layer4.0.conv1"])
    model.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(SplitError, match="unused is not called"):
        SplitModel(model, ["unused"])


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True))
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        a = self.features(x)
        if a.mean() > -1:  # always true, but depends on the data
            a = torch.relu(a)
        return self.fc(a.mean((2, 3)))


def test_untraceable_models_fall_back_to_hooks_at_a_full_forward_per_tail_pass(caplog):
    model = Branchy().eval()
    split = split_model(model, ["features"])
    assert isinstance(split, HookSplit) and split.tail_is_full_forward
    assert "falling back to forward hooks" in caplog.text
    images = torch.randn(2, 3, 8, 8)
    assert split.verify(images) == 0.0
    (carry,), logits = split.forward(images, grad_from=0)
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), carry[0])
    a = carry[0].detach().requires_grad_(True)  # what follows the target layer, written out by hand
    (expected,) = torch.autograd.grad(model.fc(torch.relu(a).mean((2, 3)))[:, 0].sum(), a)
    torch.testing.assert_close(grad, expected)
    # the replaced activation decides the output: zeroing it leaves the bias alone
    zeroed = split.tail(0, (torch.zeros_like(carry[0]), images))
    torch.testing.assert_close(zeroed, model.fc.bias.expand(2, -1))
