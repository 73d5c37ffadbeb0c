"""Cost of every metric: seconds per image against its forward-pass limit, and against the peers'
implementations of the same metric at equal settings, in one run.

    python scripts/bench_metrics.py [--models resnet18 resnet50] [--images 8] [--image-size 224]
        [--steps 32] [--repeats 3] [--peer-repeats 1] [--no-peers] [--device cuda|cpu]
        [--metrics NAME ...] [--save FILE [--merge]]

Per model (random weights, eval mode, channels_last, the default target layer): ``--images`` images
(random pixels through ImageNet's normalisation), their predicted classes, and Grad-CAM maps of
them (cambench's). Every metric is called as the runner calls it (``build_metric(...).score`` on
the batch), after a warm-up call that settles the scorer's chunk probes; a time is the fastest of
``--repeats`` calls (on a shared virtual machine the host steals CPU in bursts). CUDA is
synchronised around each call.

A metric's *limit* is its forward passes per image times t_F, the model's forward pass per image
at the device's best batch size (``torch.inference_mode``, batch sizes 1 .. 64), measured first,
plus the more maps it asks of the method per image times the method's own time (Grad-CAM's,
measured here): ADCC 1 (its map of x * L, whose pass also gives the confidence O), model
randomisation one per randomised block (6 for a ResNet), class sensitivity 1, sensitivity its
samples (10). The localisation metrics, distractor mass, the grid pointing game and map complexity
read the maps only (no limit: their time is shown against t_F); their ground truth here is the
central quarter of each image as the object mask (the grid cell) and a corner square as a distractor.

Peers, at the same images, maps, classes and settings (steps, runs, samples, percentages):
Quantus 0.6 (numpy in, its own batching; ``np.trapz``, which numpy 2.4 removed, aliased here),
TorchCAM 0.5 (its metrics compute their Grad-CAM inside ``update``: compared with cambench's
Grad-CAM plus metric), pytorch-grad-cam (ROAD: the MoRF and LeRF averages, scipy per image) and
Captum (infidelity). A peer that makes fewer forward passes per image than ours (Quantus's ROAD
scores MoRF only; its PixelFlipping skips the unperturbed point) is compared with ours scaled by
its share of the passes. Ratios are peer seconds / ours at equal work: above 1, cambench is faster.

``road imputation`` times ROAD's imputations alone (no forward pass, so no limit): the 2P noisy linear
imputations of every image on the device, against the official imputer (pytorch-grad-cam's
``NoisyLinearImputer``, scipy per image) on the same masks. On a CPU the whole ROAD metric is bounded
by its 2P forward passes: at most (peer seconds) / (its limit) faster than a peer, whatever the solver.
``--metrics`` times only the named rows; ``--merge`` replaces only those rows of the ``--save`` record.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision

from cambench.data.preprocessing import Preprocessing
from cambench.methods import build_method
from cambench.metrics import MetricContext, MetricInput, build_metric
from cambench.metrics.deletion_insertion import curve_points, perturbation_curve, pixel_ranks
from cambench.metrics.randomisation import randomisation_blocks
from cambench.metrics.road import ROAD, road_images
from cambench.models.engine import Engine, build_engine
from cambench.models.layers import default_target_layer

np.trapz = np.trapezoid  # Quantus 0.6.0 calls np.trapz (removed in numpy 2.4); here only, never in the package
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
PERCENTAGES = [10, 20, 30, 40, 50, 60, 70, 80, 90]


@dataclass
class Row:
    metric: str
    forwards: float  # per image
    seconds: float  # ours, per image
    maps: int  # more maps of the method per image (ADCC, the sanity metrics)
    limit: float
    # peer -> (its seconds per image, ours at equal work: the metric, with our Grad-CAM where the peer
    # computes one, scaled by forwards where the peer makes fewer)
    peers: dict[str, tuple[float, float]] = field(default_factory=dict)

    def ratio(self) -> float:
        return self.seconds / self.limit if self.limit else float("nan")

    def peer_ratio(self, peer: str) -> float:
        seconds, equal = self.peers[peer]
        return seconds / equal


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Fastest of ``repeats`` calls after a warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
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


def ours(
    args: argparse.Namespace, engine: Engine, method, batch: MetricInput
) -> dict[str, tuple[Callable, float, int]]:
    """Our metrics at the peers' settings: name -> (call, forward passes per image, more maps per image)."""
    steps, size = args.steps, args.image_size
    ctx = MetricContext(engine, method)
    counts, _ = curve_points(size * size, steps, None, True, batch.images.device)
    ranks = pixel_ranks(batch.maps, torch.Generator(device=batch.images.device).manual_seed(0))
    zeros = torch.zeros_like(batch.images)
    generator = torch.Generator(device=batch.images.device).manual_seed(0)
    road = ROAD.Params()  # the imputation at ROAD's defaults
    metrics = {
        "deletion_insertion": ({"steps": steps, "insertion_substrate": "zeros"}, 2 * (steps + 1), 0),
        "confidence": ({}, 1, 0),
        "adcc": ({}, 0, 1),  # one more map: the method's pass on x * L gives the map and O
        "faithfulness_correlation": ({"runs": 100, "subset": 224}, 100, 0),
        "infidelity": ({"samples": 10}, 10, 0),
        "road": ({"percentages": PERCENTAGES}, 2 * len(PERCENTAGES), 0),
        "localisation": ({}, 0, 0),
        "distractor_mass": ({}, 0, 0),
        "grid_pointing_game": ({}, 0, 0),
        "map_complexity": ({}, 0, 0),
        "model_randomisation": ({}, 0, len(randomisation_blocks(engine.model))),
        "class_sensitivity": ({}, 0, 1),
        "sensitivity": ({"samples": 10}, 0, 10),
    }
    calls = {
        "deletion curve": (
            lambda: perturbation_curve(engine.scorer, batch.images, zeros, ranks, batch.targets, counts, "probability"),
            steps + 1,
            0,
        ),
        "road imputation": (
            lambda: road_images(batch.images, batch.maps, PERCENTAGES, road.noise, road.tol, road.max_iter, generator),
            0,
            0,
        ),
    }
    for name, (params, forwards, maps) in metrics.items():
        metric = build_metric(name, ctx, **params)
        calls[name] = (lambda metric=metric: metric.score(batch), forwards, maps)
    return calls


def peers(
    args: argparse.Namespace, model: torch.nn.Module, layer: str, batch: MetricInput
) -> dict[str, dict[str, tuple[Callable, float]]]:
    """The peers' calls per metric: metric -> {peer: (call, forward passes per image)}."""
    import quantus
    from captum.metrics import infidelity
    from pytorch_grad_cam.metrics.road import (
        NoisyLinearImputer,
        ROADLeastRelevantFirstAverage,
        ROADMostRelevantFirstAverage,
    )
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
    from quantus.functions.perturb_func import noisy_linear_imputation
    from torchcam.methods import GradCAM
    from torchcam.metrics import ClassificationMetric, DeletionInsertionMetric

    steps, size = args.steps, args.image_size
    x = batch.images.float().cpu().numpy()
    y = batch.targets.cpu().numpy()
    a = batch.maps[:, None].float().cpu().numpy()
    cams = batch.maps.float().cpu().numpy()
    quantus_args = {"model": model, "x_batch": x, "y_batch": y, "a_batch": a, "device": str(batch.images.device)}
    quantus_args |= {"channel_first": True, "batch_size": len(x)}
    quiet = {"disable_warnings": True, "display_progressbar": False, "normalise": False, "abs": False}
    softmax = {"softmax": True}

    def torchcam(metric_cls, **kwargs) -> Callable[[], object]:
        def call() -> object:
            with GradCAM(model, target_layer=layer) as extractor:
                metric = metric_cls(extractor, lambda logits: logits.softmax(-1), **kwargs)
                metric.update(batch.images)
                return metric.summary()

        return call

    def pgc_road() -> object:
        targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in y]
        morf = ROADMostRelevantFirstAverage(PERCENTAGES)(batch.images, cams, targets, model)
        lerf = ROADLeastRelevantFirstAverage(PERCENTAGES)(batch.images, cams, targets, model)
        return morf, lerf

    def pgc_imputation() -> object:
        # the official imputer on ROAD's masks (kept pixels 1), its 2P imputations of every image
        imputer = NoisyLinearImputer(noise=0.01)
        ranks = pixel_ranks(batch.maps, torch.Generator(device=batch.images.device).manual_seed(0)).cpu()
        images = batch.images.float().cpu()
        counts = [round(p * size * size / 100) for p in PERCENTAGES]
        return [
            imputer(image, (keep if morf else ~keep).float().view(size, size))
            for image, rank in zip(images, ranks, strict=True)
            for n in counts
            for morf, keep in ((True, rank >= n), (False, rank < size * size - n))
        ]

    def captum_infidelity() -> object:
        def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            noise = 0.2 * torch.randn_like(inputs)
            return noise, inputs - noise

        attributions = batch.maps[:, None].expand_as(batch.images)
        return infidelity(model, perturb, batch.images, attributions, target=batch.targets, n_perturb_samples=10)

    pixel_flipping = quantus.PixelFlipping(features_in_step=size * size // steps, perturb_baseline="black", **quiet)
    faithfulness = quantus.FaithfulnessCorrelation(nr_runs=100, subset_size=224, return_aggregate=False, **quiet)
    q_infidelity = quantus.Infidelity(n_perturb_samples=10, perturb_patch_sizes=[size], **quiet)
    hw = size * size

    def pixels_imputation(arr: np.ndarray, indices: np.ndarray, **kwargs: object) -> np.ndarray:
        # Quantus 0.6's ROAD ranks the map broadcast over channels (3 HW entries) but imputes an
        # H x W mask, so its indices overflow; with a_size = 3 HW its top p% entries are the top p%
        # pixels three times over, which this maps back to pixels
        return noisy_linear_imputation(arr=arr, indices=np.unique(indices % hw), noise=0.01)

    road = quantus.ROAD(percentages=PERCENTAGES, perturb_func=pixels_imputation, **quiet)
    road.a_size = 3 * hw
    return {
        "deletion curve": {"quantus": (lambda: pixel_flipping(**quantus_args, **softmax), steps)},
        "deletion_insertion": {"torchcam": (torchcam(DeletionInsertionMetric, steps=steps), 2 * (steps + 1))},
        "confidence": {"torchcam": (torchcam(ClassificationMetric), 1)},
        "faithfulness_correlation": {"quantus": (lambda: faithfulness(**quantus_args, softmax=False), 100)},
        "infidelity": {
            "quantus": (lambda: q_infidelity(**quantus_args, softmax=False), 10),
            "captum": (captum_infidelity, 10),
        },
        "road imputation": {"pytorch-grad-cam": (pgc_imputation, 0)},
        "road": {
            "pytorch-grad-cam": (pgc_road, 2 * len(PERCENTAGES)),
            "quantus": (lambda: road(**quantus_args, **softmax), len(PERCENTAGES)),
        },
    }


def bench_model(arch: str, args: argparse.Namespace, device: torch.device) -> list[Row]:
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, num_classes=1000).eval()
    model = model.to(device, memory_format=torch.channels_last)
    layer = default_target_layer(model, arch)
    engine = build_engine(model, layer, memory_format=torch.channels_last)
    method = build_method("gradcam", engine)
    best_batch, t_forward = best_forward(model, args.image_size, device, args.repeats)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(args.images, 3, args.image_size, args.image_size, generator=generator)
    images = Preprocessing().from_pixels(pixels).to(device).contiguous(memory_format=torch.channels_last)
    out = method.explain(images)
    t_method = best_seconds(lambda: method.explain(images), args.repeats, device) / args.images
    # ground truth for the localisation metrics: the central quarter is the object, a corner square a distractor
    masks = torch.zeros(args.images, args.image_size, args.image_size, dtype=torch.bool, device=device)
    distractors = torch.zeros_like(masks)
    quarter = args.image_size // 4
    masks[:, quarter : 3 * quarter, quarter : 3 * quarter] = True
    distractors[:, :quarter, :quarter] = True
    ids = [str(i) for i in range(args.images)]
    batch = MetricInput.of(out, images, ids, labels=out.targets, masks=masks, distractors=distractors)
    print(
        f"\n{arch} ({layer}): forward {1000 * t_forward:.1f} ms/image at batch {best_batch}, "
        f"Grad-CAM {1000 * t_method:.1f} ms/image"
    )
    theirs = {} if args.no_peers else peers(args, model, layer, batch)
    rows = []
    for name, (call, forwards, maps) in ours(args, engine, method, batch).items():
        if args.metrics and name not in args.metrics:
            continue
        seconds = best_seconds(call, args.repeats, device) / args.images
        limit = forwards * t_forward + maps * t_method
        row = Row(name, forwards, seconds, maps, limit)
        for peer, (peer_call, peer_forwards) in theirs.get(name, {}).items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                peer_seconds = best_seconds(peer_call, args.peer_repeats, device) / args.images
            # TorchCAM's update computes its Grad-CAM: compare with ours plus the metric
            share = peer_forwards / forwards if forwards else 1.0
            equal = row.seconds * share + (t_method if peer == "torchcam" else 0.0)
            row.peers[peer] = (peer_seconds, equal)
        print(line(row), flush=True)
        rows.append(row)
    return rows


def line(row: Row) -> str:
    peers = ", ".join(f"{peer} {row.peers[peer][0]:.3f} s ({row.peer_ratio(peer):.1f}x)" for peer in row.peers)
    passes = f"{row.forwards:g} F" + (f" + {row.maps} M" if row.maps else "")
    limit = f"{1000 * row.limit:9.1f} ms {row.ratio():5.2f}x" if row.limit else f"{'-':>12s} {'-':>6s}"
    return f"  {row.metric:26s} {passes:>10s} {1000 * row.seconds:9.1f} ms {limit}  {peers}"


def merged(old: dict, new: dict) -> dict:
    """``old`` with the (model, metric) rows of ``new`` replaced or added, and the merge noted."""
    rows = old["rows"]
    for arch, new_rows in new["rows"].items():
        measured = {r["metric"] for r in new_rows}
        rows[arch] = [r for r in rows.get(arch, []) if r["metric"] not in measured] + new_rows
    old.setdefault("merges", []).append(new["command"])
    return old


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--images", type=int, default=8, help="images per metric call (a runner batch)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peer-repeats", type=int, default=1)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--metrics", nargs="+", help="time only these rows (default: all)")
    parser.add_argument("--save", type=Path, help="write the rows as JSON")
    parser.add_argument("--merge", action="store_true", help="replace only the measured rows of the --save record")
    args = parser.parse_args()
    if args.merge and not (args.save and args.save.exists()):
        parser.error("--merge needs --save with an existing record to merge into")

    device = torch.device(args.device)
    print(
        f"{device} ({torch.get_num_threads()} threads), {args.images} images of {args.image_size} px, "
        f"{args.steps} steps"
    )
    print(
        f"  {'metric':26s} {'passes':>10s} {'ours':>12s} {'limit':>12s} {'ratio':>6s}  "
        "peers (s/image, ratio at equal work)"
    )
    rows = {arch: bench_model(arch, args, device) for arch in args.models}
    print("\ntargets: every perturbation metric within 1.1x of its forward limit; ROAD >= 10x faster than the peers'")
    if args.save:
        command = "python scripts/bench_metrics.py " + " ".join(f"{k}={v}" for k, v in vars(args).items())
        record = {
            "command": command,
            "device": str(device),
            "platform": platform.platform(),
            "threads": torch.get_num_threads(),
            "rows": {arch: [asdict(r) | {"ratio": r.ratio()} for r in rs] for arch, rs in rows.items()},
        }
        if args.merge:
            record = merged(json.loads(args.save.read_text()), record)
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(record, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
