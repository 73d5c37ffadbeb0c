"""Score the maps of another library on your own model: pytorch-grad-cam's Grad-CAM on a small CNN.

    python examples/custom_model_other_library.py [--images 8] [--size 64]

Any ``nn.Module`` classifier works (torch.fx splits it at the target layer; forward hooks where it cannot
be traced). Maps from any tool are scored per image with ``cambench.score``; the metrics that need maps of
new inputs (ADCC's coherency) call the tool again through a one-line wrapper. cambench's own Grad-CAM on
the same model gives the same scores.
"""

from __future__ import annotations

import argparse

import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import cambench


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()
        )
        self.classifier = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = SmallCNN().eval()  # your trained model here
    images = torch.randn(args.images, 3, args.size, args.size)  # your normalised images here

    ours = cambench.method("gradcam", model, target_layer="features.4")
    theirs = GradCAM(model=model, target_layers=[model.features[4]])
    explainer = lambda x, t: theirs(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in t.tolist()])  # noqa: E731

    metrics = {"deletion_insertion": {"steps": 16}, "adcc": {}}
    their_maps = explainer(images, ours(images).targets)  # numpy (N, H, W), as pytorch-grad-cam returns them
    their_scores = cambench.score(model, images, their_maps, metrics=metrics, explainer=explainer)
    our_scores = cambench.score(model, images, ours(images).maps, metrics=metrics, explainer=ours)
    print("pytorch-grad-cam's Grad-CAM, scored by cambench:")
    print(their_scores.mean().to_string(float_format="%.4f"))
    print(f"largest difference from cambench's own Grad-CAM: {(their_scores - our_scores).abs().max().max():.2e}")


if __name__ == "__main__":
    main()
