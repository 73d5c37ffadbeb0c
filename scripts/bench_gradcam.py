"""Cost of Grad-CAM relative to the model's own forward pass and to pytorch-grad-cam.

    python scripts/bench_gradcam.py --model resnet18 --batch-size 16 --repeats 5

All three are timed in one run, on the same model, device, batch and targets; the report is the
time per image of each and the ratios (Grad-CAM / forward, pytorch-grad-cam / ours). Timings are
medians over ``--repeats`` after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

from cambench.methods import build_method
from cambench.models.layers import default_target_layer


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, num_classes=1000).eval().to(device)
    layer = model.get_submodule(default_target_layer(args.model, model))
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    method = build_method("gradcam", model, layer)
    targets = method(images).targets

    def forward():
        with torch.inference_mode():
            model(images)

    results = {
        "forward": median_seconds(forward, args.repeats, device),
        "cambench gradcam": median_seconds(lambda: method(images, targets), args.repeats, device),
    }
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        peer_targets = [ClassifierOutputTarget(t) for t in targets.tolist()]
        with GradCAM(model=model, target_layers=[layer]) as peer:
            results["pytorch-grad-cam"] = median_seconds(
                lambda: peer(input_tensor=images, targets=peer_targets), args.repeats, device
            )
    except ImportError:
        print("pytorch-grad-cam not installed (pip install grad-cam): peer timing skipped")

    n = args.batch_size
    print(f"{args.model}, batch {n}, {args.image_size} px, {device} ({torch.get_num_threads()} threads)")
    for name, seconds in results.items():
        print(f"  {name:18s} {1000 * seconds / n:8.2f} ms/image")
    print(f"  gradcam / forward        {results['cambench gradcam'] / results['forward']:.2f}x")
    if "pytorch-grad-cam" in results:
        print(f"  pytorch-grad-cam / ours  {results['pytorch-grad-cam'] / results['cambench gradcam']:.2f}x")


if __name__ == "__main__":
    main()
