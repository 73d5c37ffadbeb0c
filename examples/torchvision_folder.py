"""Benchmark CAM methods on a torchvision classifier over a folder of images.

    python examples/torchvision_folder.py IMAGE_FOLDER [--model resnet50] [--weights DEFAULT]
        [--methods gradcam gradcampp scorecam] [--images 64] [--out results/my-benchmark]

IMAGE_FOLDER is an ImageFolder tree (``<class name>/<image files>``); with torchvision's ImageNet weights
give each folder's ImageNet class index with ``--class-map n01440764=0 ...`` or name the folders by
index. The images go through the weights' own resize, crop and normalisation; every method and the
Fake-CAM sanity baseline are scored by deletion / insertion and ADCC, and the summary is printed (and
written with the per-image rows to ``--out``).
"""

from __future__ import annotations

import argparse

import torch
import torchvision

import cambench
from cambench.data.preprocessing import Preprocessing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="an ImageFolder tree of images")
    parser.add_argument("--model", default="resnet50", help="a torchvision classifier (default resnet50)")
    parser.add_argument("--weights", default="DEFAULT", help="torchvision weights (DEFAULT), or random")
    parser.add_argument("--methods", nargs="+", default=["gradcam", "gradcampp", "scorecam"])
    parser.add_argument("--class-map", nargs="*", default=[], help="FOLDER=INDEX, the model's class of a folder")
    parser.add_argument("--images", type=int, default=64, help="images evaluated (the first ones)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", help="a folder for the per-image rows and the summary (and to go on after a stop)")
    args = parser.parse_args(argv)

    model = cambench.load_model(args.model, args.weights)
    weights = None if args.weights == "random" else torchvision.models.get_model_weights(args.model)[args.weights]
    preprocessing = Preprocessing.from_weights(weights) if weights else Preprocessing()
    class_map = {name: int(index) for name, index in (pair.split("=") for pair in args.class_map)} or None
    data = cambench.load_dataset("folder", preprocessing, root=args.folder, class_map=class_map)
    data = torch.utils.data.Subset(data, range(min(args.images, len(data))))

    rows, summary = cambench.benchmark(
        model, data, methods=args.methods, batch_size=args.batch_size, preprocessing=preprocessing, out_dir=args.out
    )
    scored = rows.groupby("method").size().to_dict()
    scores = summary[summary["metric"].isin(["deletion", "insertion", "adcc_per_image"])]
    print(f"images scored: {scored}\n{scores.to_string(index=False, float_format='%.4f')}")


if __name__ == "__main__":
    main()
