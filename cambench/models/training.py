"""The reference training recipe for torchvision architectures on the ``shapes`` dataset.

Recipe (the same for every architecture): from scratch, fresh scenes every step (no epochs,
so no memorisation), rendered at the evaluation resolution (224 px) and normalised with the
dataset's statistics; AdamW (weight decay 5e-4) under a one-cycle learning-rate schedule peaking
at 2e-3, cross-entropy, batch 32, 400 steps (600 for MobileNetV3, see below).
- The first 340 steps see 128 px windows cropped around the object: objects and textures keep
  the pixel scale they have at evaluation, only the context shrinks, at a third of the cost.
- The last 60 steps see full 224 px images, which adapts the network to the full context
  (without them held-out accuracy on full images stays below 50% while crops are all right).
- Finally batch-norm statistics are re-estimated as plain averages over 20 batches of fresh
  full images ("precise BN"): MobileNetV3's batch-norm momentum of 0.01 otherwise leaves them
  at the crops' statistics, and its held-out accuracy at chance.
- MobileNetV3 converges slower from scratch (94.0% held-out after 400 steps): it trains for
  600 steps, the last 90 on full images.
Held-out accuracy is measured on the ``test`` split, whose scenes come from a different seed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import torch
import torchvision
from torch import Tensor, nn
from tqdm import tqdm

from cambench.data.base import collate, normalise
from cambench.data.shapes import EXTENT, SHAPE_CLASSES, Scenes, render, sample_scenes
from cambench.data.shapes_dataset import TEST_SEED, TRAIN_SEED, ShapesDataset
from cambench.models.layers import family

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    steps: int = 400
    full_image_steps: int = 60  # the last steps train on full images
    batch_norm_batches: int = 20  # full-image batches that re-estimate batch-norm statistics
    batch_size: int = 32
    image_size: int = 224
    crop: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    seed: int = TRAIN_SEED


def recipe_for(arch: str) -> Recipe:
    """The reference recipe of ``arch``: MobileNetV3 trains longer (see the module docstring)."""
    if family(arch) == "mobilenet_v3":
        return Recipe(steps=600, full_image_steps=90)
    return Recipe()


def build_untrained(arch: str, num_classes: int = len(SHAPE_CLASSES)) -> nn.Module:
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def object_crops(images: Tensor, scenes: Scenes, crop: int, generator: torch.Generator) -> Tensor:
    """Random ``crop``-pixel windows that contain each object's centre and, where it fits, all of it."""
    size = images.shape[-1]
    reach = (scenes.radius * EXTENT * size)[:, None]
    centre = scenes.centre * size
    lo = (centre + reach - crop).clamp(0, size - crop)
    hi = torch.maximum((centre - reach).clamp(0, size - crop), lo)
    corner = (lo + torch.rand(lo.shape, generator=generator) * (hi - lo)).long()
    return torch.stack([im[:, y : y + crop, x : x + crop] for im, (x, y) in zip(images, corner.tolist(), strict=True)])


def train(arch: str, recipe: Recipe = Recipe(), device: str = "cpu", progress: bool = True) -> nn.Module:
    """Train ``arch`` from scratch on freshly rendered ``shapes`` scenes."""
    torch.manual_seed(recipe.seed)
    model = build_untrained(arch).to(device, memory_format=torch.channels_last).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=recipe.lr, total_steps=recipe.steps)
    generator = torch.Generator().manual_seed(recipe.seed)
    bar = tqdm(range(recipe.steps), desc=f"training {arch} on shapes", disable=not progress)
    crop_steps = recipe.steps - recipe.full_image_steps
    start = time.perf_counter()
    for step in bar:
        if step == 2:  # after a warm-up step: announce the whole run's time (full images cost more)
            per_step = (time.perf_counter() - start) / 2
            total = per_step * (crop_steps + recipe.full_image_steps * (recipe.image_size / recipe.crop) ** 2)
            log.warning("training %s on %s will take about %.0f minutes", arch, device, total / 60)
        scenes = sample_scenes(recipe.batch_size, generator)
        images = render(scenes, recipe.image_size)[0]
        if step < crop_steps:
            images = object_crops(images, scenes, recipe.crop, generator)
        logits = model(normalise(images).to(device, memory_format=torch.channels_last))
        loss = nn.functional.cross_entropy(logits, scenes.label.to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    recalibrate_batch_norm(model, recipe, generator, device)
    return model.eval()


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, recipe: Recipe, generator: torch.Generator, device: str) -> None:
    """Re-estimate batch-norm statistics as plain averages over fresh full images ("precise BN")."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta, was_training = [m.momentum for m in norms], model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for _ in range(recipe.batch_norm_batches):
        images = render(sample_scenes(recipe.batch_size, generator), recipe.image_size)[0]
        model(normalise(images).to(device, memory_format=torch.channels_last))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)


@torch.no_grad()
def accuracy(model: nn.Module, n_images: int = 1000, device: str = "cpu", batch_size: int = 50) -> float:
    """Top-1 accuracy on the first ``n_images`` of the held-out ``test`` split."""
    data = ShapesDataset(split="test", num_images=n_images, image_size=224)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, collate_fn=collate)
    correct = 0
    for batch in loader:
        correct += (model(batch.images.to(device)).argmax(1).cpu() == batch.labels).sum().item()
    return correct / n_images


def recipe_card(arch: str, recipe: Recipe, acc: float, seconds: float) -> dict:
    return {
        "arch": arch,
        "recipe": asdict(recipe),
        "test_accuracy": acc,
        "test_seed": TEST_SEED,
        "train_seconds": round(seconds, 1),
    }


def timed_train(arch: str, recipe: Recipe, device: str = "cpu") -> tuple[nn.Module, dict]:
    start = time.perf_counter()
    model = train(arch, recipe, device)
    seconds = time.perf_counter() - start
    return model, recipe_card(arch, recipe, accuracy(model, device=device), seconds)
