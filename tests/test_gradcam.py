"""Grad-CAM: the formula on hand-made tensors, the base pipeline on an analytic stub, and
numerical parity with pytorch-grad-cam on real architectures."""

import pytest
import torch
import torchvision
from torch import nn

from cambench.methods import METHODS, build_method
from cambench.methods.base import minmax, upsample


def test_registry_lists_gradcam_and_rejects_unknown():
    assert "gradcam" in METHODS
    with pytest.raises(KeyError, match=r"valid choices: .*gradcam"):
        build_method("nosuch", nn.Identity(), nn.Identity())


def test_gradcam_formula_on_hand_made_activations_and_gradients():
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])  # (1, 2, 2, 2)
    g = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]], [[-4.0, 0.0], [0.0, 0.0]]]])  # channel means 1 and -1
    raw = METHODS["gradcam"].cam(None, a, g)
    torch.testing.assert_close(raw, torch.tensor([[[1.0, 1.0], [3.0, 3.0]]]))  # 1 * A_0 - 1 * A_1


def test_minmax_and_upsample_follow_pytorch_grad_cam_conventions():
    maps = torch.tensor([[[2.0, 4.0], [6.0, 10.0]]])
    torch.testing.assert_close(minmax(maps), torch.tensor([[[0.0, 0.25], [0.5, 1.0]]]) * (8 / (8 + 1e-7)))
    up = upsample(torch.tensor([[[0.0, 1.0]]]), (1, 4))  # half-pixel centres: 0, .25, .75, 1
    torch.testing.assert_close(up, torch.tensor([[[0.0, 0.25, 0.75, 1.0]]]))


class Stub(nn.Module):
    """features (target) -> global average pool -> linear: Grad-CAM is then ReLU(sum_k W_ck A_k) / hw."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 3, 1)
        self.features = nn.Identity()
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.stem.weight.copy_(torch.tensor([1.0, -1.0, 2.0]).view(3, 1, 1, 1))
            self.stem.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, -1.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.features(self.stem(x)).mean((2, 3)))


def test_base_pipeline_on_analytic_stub_uses_prediction_or_given_targets():
    model = Stub()
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])  # logits: class 0 = 1.5 + 1.5, class 1 = -1.5 - 3
    out = build_method("gradcam", model, model.features)(x)
    assert out.targets.tolist() == [0]
    # class 0: L = A_0 + 0.5 A_2 = x + x = 2x -> min-max -> x / 3, and the map is already at input size
    torch.testing.assert_close(out.maps, (x[:, 0] / 3) * (6 / (6 + 1e-7)), atol=1e-6, rtol=0)
    # class 1: L = A_1 - A_2 = -3x <= 0 -> ReLU -> all zeros
    out1 = build_method("gradcam", model, model.features)(x, torch.tensor([1]))
    assert out1.targets.tolist() == [1] and out1.maps.abs().max() == 0


def test_backward_stops_at_the_target_layer_and_tolerates_in_place_ops():
    model = torchvision.models.resnet18(num_classes=4).eval()
    called = []
    model.layer3.register_full_backward_hook(lambda *args: called.append(True))
    # layer4.1.bn2 is followed by the in-place ``out += identity`` of the residual block
    method = build_method("gradcam", model, model.layer4[1].bn2)
    out = method(torch.randn(2, 3, 64, 64))
    assert not called, "the backward pass ran through layers before the target layer"
    assert all(p.grad is None for p in model.parameters())
    assert out.maps.shape == (2, 64, 64) and out.maps.min() >= 0 and out.maps.max() <= 1


@pytest.mark.parametrize(
    ("arch", "layer"),
    [("resnet18", "layer4"), ("vgg11_bn", "features.27"), ("mobilenet_v3_small", "features.12")],
)
def test_gradcam_agrees_with_pytorch_grad_cam(arch, layer):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, num_classes=10).eval()
    images = torch.randn(4, 3, 96, 96)
    ours = build_method("gradcam", model, model.get_submodule(layer))(images)
    targets = ours.targets.tolist()
    with GradCAM(model=model, target_layers=[model.get_submodule(layer)]) as peer:
        theirs = peer(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
    assert torch.from_numpy(theirs).max() > 0
    assert (ours.maps - torch.from_numpy(theirs)).abs().max() < 1e-4


def test_bf16_autocast_maps_stay_close_to_fp32():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    images = torch.randn(2, 3, 64, 64)
    fp32 = build_method("gradcam", model, model.layer4)(images)
    bf16 = build_method("gradcam", model, model.layer4, autocast_dtype=torch.bfloat16)(images, fp32.targets)
    assert bf16.maps.dtype == torch.float32 and bf16.logits.dtype == torch.float32
    assert (bf16.maps - fp32.maps).abs().mean() < 0.05
