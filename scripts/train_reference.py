"""Train the shapes reference checkpoints with the reference recipe and record them.

    python scripts/train_reference.py resnet18 mobilenet_v3_small            # ship into the package
    python scripts/train_reference.py resnet50 --out ~/.cache/cambench/checkpoints

Each checkpoint is saved as fp16 safetensors next to a manifest entry holding its sha256,
held-out accuracy on 1000 ``test`` scenes, the recipe and the training time. The recipe is
documented in ``cambench/models/training.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from cambench.models.checkpoints import SHIPPED_DIR, save_reference
from cambench.models.training import Recipe, recipe_for, timed_train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archs", nargs="+", help="torchvision architecture names")
    parser.add_argument("--out", type=Path, default=SHIPPED_DIR, help="folder of the checkpoints and manifest")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--min-accuracy", type=float, default=0.95, help="refuse to save below this")
    for field in dataclasses.fields(Recipe):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}", type=type(field.default), help=f"override the recipe's {field.name}"
        )
    args = parser.parse_args()
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe) if getattr(args, f.name) is not None}
    failed = []
    for arch in args.archs:
        model, card = timed_train(arch, dataclasses.replace(recipe_for(arch), **overrides), args.device)
        print(f"{arch}: held-out accuracy {card['test_accuracy']:.4f} after {card['train_seconds']:.0f} s")
        if card["test_accuracy"] < args.min_accuracy:
            failed.append(arch)
            continue
        print(f"saved {save_reference(arch, model, card | {'device': args.device}, args.out)}")
    if failed:
        print(f"below --min-accuracy {args.min_accuracy}, not saved: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
