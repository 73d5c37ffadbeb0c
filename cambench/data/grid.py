"""Mosaics for the grid pointing game, on any dataset (``dataset.grid=2``).

Böhle, Fritz and Schiele, "B-cos Networks: Alignment is All We Need for Interpretability", CVPR 2022,
https://arxiv.org/abs/2205.10268 (and its code, B-cos/B-cos-v2 ``interpretability/analyses/localisation.py``):
n x n images of distinct classes are tiled into one mosaic and each cell's class is explained on the
whole mosaic; the score (``cambench.metrics.grid_pointing_game``) is the share of the map's positive
attribution that falls in that class's cell, sum_cell max(L, 0) / sum max(L, 0).

The protocol, as here:

- only images the model classifies correctly with confidence >= ``dataset.grid_confidence`` are used
  (B-cos: 0.5, on sigmoid(logit) since their networks are trained with binary cross-entropy; here the
  softmax probability, the confidence of torchvision's softmax classifiers; 0 keeps the correctness
  filter alone, B-cos-v2's "noconfthresh" variant; null drops the filter and the model's pre-pass);
- per class, the images most confident first; each mosaic takes n x n classes drawn at random (seeded)
  among those with an image left, and the next image of each, placed in the drawn order (row-major);
- each cell is the image resized to size // n (B-cos-v2's ``do_rescale``), so the mosaic has the model's
  input size (n * (size // n) pixels a side).

What differs: B-cos scores the whole test set and seeds with 42; here the images scored are a prefix
of the seeded label-stratified order of the dataset (``runner.seed``), grown (2x, 4x, ... the cells
asked for) until the confident images fill the mosaics asked for, or the dataset ends. A dataset item
is one cell (mosaic image, cell's class, cell mask, id ``grid-<mosaic>-<cell>``), so ``runner.num_images``
counts cells: ceil(num_images / n^2) mosaics; null: as many mosaics as the confident images allow.
Every cell explains its own class: a grid run sets runner.target=label (with a warning, and recorded).
The pre-pass is one forward pass per image scored (in the model's dtype, without runner.autocast),
about 2 per cell evaluated; B-cos smoothed pixel attributions before scoring, CAMs are not smoothed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from cambench.data.base import DatasetError, Sample, collate
from cambench.data.sampling import coverage, stratified_order

log = logging.getLogger(__name__)

PROTOCOL_CONFIDENCE = 0.5  # B-cos's conf_thresh


def grid_options(schema: type) -> type:
    """The dataset schema ``schema`` with the grid options after its own fields (every dataset has them):
    ``grid`` (cells a side; null: off) and ``grid_confidence`` (the filter's threshold; null: no filter)."""
    extended = dataclasses.make_dataclass(
        schema.__name__,
        [
            ("grid", int | None, dataclasses.field(default=None)),
            ("grid_confidence", float | None, dataclasses.field(default=PROTOCOL_CONFIDENCE)),
        ],
        bases=(schema,),
    )
    extended.__module__, extended.__qualname__, extended.__doc__ = (
        schema.__module__,
        schema.__qualname__,
        schema.__doc__,
    )
    return extended


def check_grid(cfg: Any, num_classes: int) -> None:
    """Raise ``DatasetError`` for grid options a run cannot use (before anything is loaded)."""
    n, confidence = getattr(cfg, "grid", None), getattr(cfg, "grid_confidence", None)
    if n is None:
        return
    if n < 2:
        raise DatasetError(f"dataset.grid must be null (off) or >= 2 cells a side (the protocol uses 2 or 3), got {n}")
    if n * n > num_classes:
        raise DatasetError(
            f"dataset.grid={n} needs {n * n} distinct classes a mosaic but dataset={cfg.name} has {num_classes}; "
            "use a smaller dataset.grid"
        )
    if confidence is not None and not 0 <= confidence <= 1:
        raise DatasetError(f"dataset.grid_confidence must be in [0, 1] or null (no filter), got {confidence}")


def mosaic(images: Sequence[Tensor], n: int, cell: tuple[int, int]) -> Tensor:
    """``images`` (n * n of (C, h, w)) resized to ``cell`` (bilinear, antialiased; unchanged if already that
    size) and tiled row-major: image k at row k // n, column k % n; returns (C, n * cell_h, n * cell_w)."""
    cells = [
        image
        if tuple(image.shape[-2:]) == cell
        else F.interpolate(image[None], cell, mode="bilinear", antialias=True)[0]
        for image in images
    ]
    return torch.cat([torch.cat(cells[row * n : (row + 1) * n], dim=2) for row in range(n)], dim=1)


def cell_mask(n: int, cell: tuple[int, int], k: int) -> Tensor:
    """The region (n * cell_h, n * cell_w) bool of cell ``k`` (row-major)."""
    (h, w), (row, col) = cell, divmod(k, n)
    mask = torch.zeros(n * h, n * w, dtype=torch.bool)
    mask[row * h : (row + 1) * h, col * w : (col + 1) * w] = True
    return mask


def plan_mosaics(
    candidates: Mapping[int, Sequence[int]], cells: int, count: int | None, seed: int
) -> list[list[tuple[int, int]]]:
    """Up to ``count`` mosaics (None: as many as possible) as lists of ``cells`` (class, image index):
    each draws ``cells`` distinct classes at random among those with a candidate left and takes the
    next candidate of each (``candidates``: class -> image indices, most confident first)."""
    generator = torch.Generator().manual_seed(seed)
    taken = dict.fromkeys(candidates, 0)
    mosaics: list[list[tuple[int, int]]] = []
    while count is None or len(mosaics) < count:
        available = [c for c in sorted(candidates) if taken[c] < len(candidates[c])]
        if len(available) < cells:
            break
        drawn = [available[i] for i in torch.randperm(len(available), generator=generator)[:cells].tolist()]
        mosaics.append([(c, candidates[c][taken[c]]) for c in drawn])
        for c in drawn:
            taken[c] += 1
    return mosaics


class GridDataset(Dataset):
    """One item per cell of seeded mosaics of ``n`` x ``n`` images of distinct classes of ``base``.

    ``candidates``: class -> indices of ``base``, most confident first (see :func:`plan_mosaics`);
    ``mosaics``: how many (None: as many as the candidates allow); ``size``: the mosaic's side (or
    (H, W)) before rounding down to a multiple of n; None: the base images' size. Item ``m * n^2 + k``
    is cell k of mosaic m: the mosaic image, the cell's class, the cell's region as the mask, id
    ``grid-<m>-<k>``; the base images' own masks and distractors are dropped.
    """

    def __init__(
        self,
        base: Dataset,
        n: int,
        candidates: Mapping[int, Sequence[int]],
        seed: int,
        size: int | tuple[int, int] | None = None,
        mosaics: int | None = None,
    ):
        self.base, self.n = base, n
        self.plan = plan_mosaics(candidates, n * n, mosaics, seed)
        if not self.plan:
            raise DatasetError(f"no {n} x {n} mosaic: fewer than {n * n} classes have a candidate image")
        if size is None:
            size = tuple(base[self.plan[0][0][1]].image.shape[-2:])
        height, width = (size, size) if isinstance(size, int) else size
        self.cell = (height // n, width // n)
        self._cached: tuple[int, Tensor] | None = None  # consecutive cells share their mosaic

    def __len__(self) -> int:
        return len(self.plan) * self.n * self.n

    def labels(self) -> list[int]:
        """Every cell's class, in item order."""
        return [c for cells in self.plan for c, _ in cells]

    def image(self, m: int) -> Tensor:
        """Mosaic ``m``, (3, n * cell_h, n * cell_w) model input."""
        if self._cached is None or self._cached[0] != m:
            samples = [self.base[index] for _, index in self.plan[m]]
            for (c, index), sample in zip(self.plan[m], samples, strict=True):
                if sample.label != c:
                    raise DatasetError(f"image {sample.id} (index {index}) has label {sample.label}, its labels() {c}")
            self._cached = (m, mosaic([s.image for s in samples], self.n, self.cell))
        return self._cached[1]

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(index)
        m, k = divmod(index, self.n * self.n)
        return Sample(self.image(m), self.plan[m][k][0], cell_mask(self.n, self.cell, k), f"grid-{m:04d}-{k}")


def _labels(base: Dataset) -> list[int]:
    return base.labels() if hasattr(base, "labels") else [base[i].label for i in range(len(base))]


@torch.inference_mode()
def score(
    base: Dataset,
    indices: Sequence[int],
    model: Callable[[Tensor], Tensor],
    device: torch.device,
    batch_size: int,
    num_workers: int = 0,
    memory_format: torch.memory_format = torch.preserve_format,
    bar: tqdm | None = None,
) -> tuple[Tensor, Tensor]:
    """Whether ``model`` classifies each of ``base[indices]`` correctly (N,) bool, and the softmax
    probability of its label (N,) float32, in batches under inference mode on ``device``."""
    loader = DataLoader(Subset(base, list(indices)), batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
    correct, confidence = [], []
    for batch in loader:
        probabilities = model(batch.images.to(device, memory_format=memory_format)).float().softmax(1).cpu()
        correct.append(probabilities.argmax(1) == batch.labels)
        confidence.append(probabilities.gather(1, batch.labels[:, None])[:, 0])
        if bar is not None:
            bar.update(len(batch.ids))
    return torch.cat(correct), torch.cat(confidence)


def confident(
    indices: Tensor, labels: Tensor, correct: Tensor, confidence: Tensor, threshold: float
) -> dict[int, list[int]]:
    """class -> the ``indices`` classified correctly with ``confidence`` >= ``threshold``, most confident first."""
    keep = correct & (confidence >= threshold)
    order = torch.argsort(confidence[keep], descending=True, stable=True)
    return by_class(indices[keep][order], labels[keep][order])


def by_class(indices: Tensor, labels: Tensor) -> dict[int, list[int]]:
    """class -> its ``indices``, in the given order."""
    grouped: dict[int, list[int]] = {}
    for index, label in zip(indices.tolist(), labels.tolist(), strict=True):
        grouped.setdefault(label, []).append(index)
    return grouped


def build_grid(
    base: Dataset,
    n: int,
    threshold: float | None,
    model: Callable[[Tensor], Tensor],
    device: torch.device,
    num_images: int | None,
    seed: int,
    batch_size: int = 16,
    num_workers: int = 0,
    memory_format: torch.memory_format = torch.preserve_format,
    progress: bool = False,
) -> tuple[GridDataset, str]:
    """The run's :class:`GridDataset` over ``base`` (see the module docstring) and a line describing it.

    ``threshold`` None: every image qualifies and the model is not run. Raises ``DatasetError`` naming
    the options to change when fewer than n^2 classes have a qualifying image."""
    cells = n * n
    wanted = None if num_images is None else math.ceil(num_images / cells)
    labels = torch.as_tensor(_labels(base), dtype=torch.long)
    order = stratified_order(labels, seed)
    if threshold is None:
        candidates, scored, source = by_class(order, labels[order]), len(order), "no confidence filter"
    else:
        start = time.perf_counter()
        correct, confidence = torch.zeros(0, dtype=torch.bool), torch.zeros(0)
        bar = tqdm(total=0, desc=f"grid {n}x{n}: confidence filter", unit="image", disable=not progress)
        scored, step = 0, len(order) if wanted is None else 2 * wanted * cells
        while True:  # a longer prefix of the seeded order until the confident images fill the mosaics
            stop = min(len(order), max(step, 2 * scored))
            bar.total = stop
            bar.refresh()
            more = score(base, order[scored:stop].tolist(), model, device, batch_size, num_workers, memory_format, bar)
            correct, confidence = torch.cat([correct, more[0]]), torch.cat([confidence, more[1]])
            scored = stop
            candidates = confident(order[:scored], labels[order[:scored]], correct, confidence, threshold)
            if scored == len(order) or len(plan_mosaics(candidates, cells, wanted, seed)) == wanted:
                break
        bar.close()
        kept = sum(map(len, candidates.values()))
        source = f"{kept} of {scored} images scored are classified correctly with probability >= {threshold:g}"
        log.info("grid confidence filter: %s (%.1f s)", source, time.perf_counter() - start)
    if len(candidates) < cells:
        if threshold is None:
            raise DatasetError(f"dataset.grid={n} needs {cells} classes but the dataset has {len(candidates)}")
        raise DatasetError(
            f"dataset.grid={n} needs {cells} classes with an image the model classifies correctly with softmax "
            f"probability >= {threshold:g}, but {len(candidates)} classes have one among the {scored} images "
            "scored; lower dataset.grid_confidence (0: correct only, null: no filter), use a smaller dataset.grid, "
            "or trained weights (model.weights)"
        )
    dataset = GridDataset(base, n, candidates, seed, mosaics=wanted)
    if wanted is not None and len(dataset.plan) < wanted:
        log.warning("only %d of the %d mosaics asked for (runner.num_images=%d)", len(dataset.plan), wanted, num_images)
    described = coverage(torch.as_tensor(dataset.labels()))
    count = len(dataset.plan)
    return dataset, f"{count} mosaic{'s' * (count != 1)} of {n} x {n} = {described} ({source})"


def grid_for_run(
    base: Dataset,
    dataset: Any,
    runner: Any,
    model: Callable[[Tensor], Tensor],
    device: torch.device,
    memory_format: torch.memory_format = torch.preserve_format,
) -> tuple[GridDataset, str]:
    """:func:`build_grid` with the options of a run's ``dataset`` and ``runner`` configs."""
    loading = {"batch_size": runner.batch_size, "num_workers": runner.num_workers, "progress": runner.progress}
    return build_grid(
        base,
        dataset.grid,
        dataset.grid_confidence,
        model,
        device,
        runner.num_images,
        runner.seed,
        **loading,
        memory_format=memory_format,
    )
