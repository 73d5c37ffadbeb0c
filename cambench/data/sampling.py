"""Which images a run evaluates: a seeded random subset, stratified by label where labels are known.

Taking the first N items is biased: ImageNet's class folders are sorted, so 64 images would be
two classes. Every item gets the key (r + 1/2) / n_c, where n_c is the size of its class and r a
random rank within it; the N smallest keys form the subset. Every class contributes in
proportion to its size (a class-balanced set gives round robin over classes in random order),
ties are broken at random, and the subset is returned in dataset order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from cambench.data.base import DatasetError


def stratified_subset(labels: Sequence[int] | Tensor, n: int, seed: int) -> Tensor:
    """Indices (n,) ascending, a seeded subset of ``range(len(labels))`` stratified by label."""
    return stratified_order(labels, seed)[:n].sort().values


def stratified_order(labels: Sequence[int] | Tensor, seed: int) -> Tensor:
    """Every index of ``range(len(labels))`` once, by ascending key: each prefix is a stratified subset
    (the one :func:`stratified_subset` returns, in this order rather than sorted)."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=generator)
    shuffled = labels[perm]
    counts = torch.bincount(shuffled)
    by_class = torch.argsort(shuffled, stable=True)  # grouped by class, random order within
    first = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(perm)
    rank[by_class] = torch.arange(len(labels)) - first[shuffled[by_class]]
    key = (rank + 0.5) / counts[shuffled]
    return perm[torch.argsort(key, stable=True)]


def random_subset(size: int, n: int, seed: int) -> Tensor:
    """Indices (n,) ascending, a seeded uniform subset of ``range(size)`` (labels unknown)."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def coverage(labels: Tensor) -> str:
    """'64 images, 8 classes, 8 per class' (or min-max per class)."""
    per_class = torch.bincount(labels)
    per_class = per_class[per_class > 0]
    lo, hi = per_class.min().item(), per_class.max().item()
    spread = f"{lo} per class" if lo == hi else f"{lo}-{hi} per class"
    return f"{len(labels)} images, {len(per_class)} classes, {spread}"


def select_images(dataset: Dataset, n: int | None, seed: int) -> tuple[Dataset, str]:
    """The ``n`` images a run evaluates (None: all), a seeded subset stratified by label where the dataset
    knows its labels (``dataset.labels()``), and a line on their class coverage. More images than the
    dataset holds is an error: the run would silently be smaller than asked."""
    if n is not None and n > len(dataset):
        raise DatasetError(
            f"runner.num_images={n} but the dataset holds {len(dataset)} images: ask for at most {len(dataset)}, "
            "or runner.num_images=null for all of them"
        )
    if n is None or n == len(dataset):
        return dataset, f"all {len(dataset)} images"
    labels = dataset.labels() if hasattr(dataset, "labels") else None
    if labels is None:
        return Subset(dataset, random_subset(len(dataset), n, seed).tolist()), f"{n} random images (labels unknown)"
    index = stratified_subset(labels, n, seed)
    described = coverage(torch.as_tensor(labels)[index])
    return Subset(dataset, index.tolist()), f"{described} (seeded subset of {len(dataset)})"
