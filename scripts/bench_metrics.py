"""Cost of the metrics relative to their forward-pass limit, measured in one run.

    python scripts/bench_metrics.py --models resnet18 resnet50 --steps 32 --images 8

A deletion curve of S steps needs S + 1 forward passes per image; its limit is that many
forwards at the device's best batch size, measured here first (the forward pass alone, in
``torch.inference_mode``, channels_last, at batch sizes 1, 2, 4, ... 64). Each metric is timed
after a warm-up call, so the scorer's one-time chunk probe is settled, as it is after the first
batch of a run. The report gives seconds per image, the limit and their ratio, for the scorer's
probed chunks and for a fixed chunk of 256 rows (the foundation's default), whose cost shows why
the chunk is probed. Timings are the fastest of ``--repeats`` calls.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torchvision

from cambench.data.preprocessing import Preprocessing
from cambench.metrics.deletion_insertion import (
    areas,
    curve_points,
    deletion_insertion_curves,
    perturbation_curve,
    pixel_ranks,
)
from cambench.metrics.substrates import substrate
from cambench.models.scorer import Scorer
from cambench.models.split import split_model

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


def best_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Fastest of ``repeats`` calls after a warm-up (on a shared virtual machine the host steals CPU in bursts)."""
    fn()  # warm-up (and, for the scorer, its chunk probe)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def best_forward(model: torch.nn.Module, size: int, device: torch.device, repeats: int) -> tuple[int, float]:
    """(batch size, seconds per image) of the fastest forward pass per image."""
    per_image = {}
    for batch in BATCH_SIZES:
        x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)

        def forward(x: torch.Tensor = x) -> None:
            with torch.inference_mode():
                model(x)

        per_image[batch] = best_seconds(forward, repeats, device) / batch
    best = min(per_image, key=per_image.get)
    return best, per_image[best]


def bench_model(arch: str, args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, num_classes=1000).eval()
    model = model.to(device, memory_format=torch.channels_last)
    split = split_model(model, [])
    best_batch, t_forward = best_forward(model, args.image_size, device, args.repeats)
    n, steps = args.images, args.steps
    images = torch.randn(n, 3, args.image_size, args.image_size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    maps = torch.rand(n, args.image_size, args.image_size, device=device)
    targets = torch.randint(1000, (n,), device=device)
    ranks = pixel_ranks(maps, torch.Generator(device=device).manual_seed(0))
    zeros = torch.zeros_like(images)
    blurred = substrate("blur", images, Preprocessing())
    counts, intervals = curve_points(args.image_size**2, steps, device=device)
    print(f"\n{arch}: best forward {1000 * t_forward:.1f} ms/image at batch {best_batch}")
    print(f"  {'metric':20s} {'chunks':>14s} {'ms/image':>9s} {'limit':>9s} {'ratio':>6s}")
    for label, chunk in (("probed", None), ("fixed", 256)):
        scorer = Scorer(split, chunk, memory_format=torch.channels_last)
        rows = {
            "deletion curve": (
                lambda scorer=scorer: perturbation_curve(scorer, images, zeros, ranks, targets, counts),
                steps + 1,
            ),
            "deletion_insertion": (
                lambda scorer=scorer: areas(
                    deletion_insertion_curves(scorer, images, ranks, targets, zeros, blurred, counts), intervals
                ),
                2 * (steps + 1),
            ),
        }
        for name, (fn, forwards) in rows.items():
            seconds = best_seconds(fn, args.repeats, device) / n
            limit = forwards * t_forward
            settled = ", ".join(str(p.best) for p in scorer.probes.values()) if chunk is None else str(chunk)
            print(
                f"  {name:20s} {label + ' ' + settled:>14s} {1000 * seconds:9.1f} {1000 * limit:9.1f} "
                f"{seconds / limit:5.2f}x"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--images", type=int, default=8, help="images per metric call (a runner batch)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    threads = torch.get_num_threads()
    print(f"{device} ({threads} threads), {args.images} images of {args.image_size} px, {args.steps} steps")
    for arch in args.models:
        bench_model(arch, args, device)
    print("\ntarget: the deletion curve within 1.1x of S + 1 forwards at the best batch size (probed chunks)")


if __name__ == "__main__":
    main()
