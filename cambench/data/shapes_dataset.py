"""The ``shapes`` dataset: a deterministic split of rendered scenes (see ``shapes.py``)."""

from __future__ import annotations

from torch.utils.data import Dataset

from cambench.data.base import DatasetError, Sample, normalise
from cambench.data.shapes import SHAPE_CLASSES, render_layers, sample_labels, sample_scenes, scene_generator

TRAIN_SEED = 0
TEST_SEED = 1
SPLIT_SEEDS = {"train": TRAIN_SEED, "test": TEST_SEED}
SPLIT_SIZE = 10_000  # scenes per split; a run evaluates runner.num_images of them


class ShapesDataset(Dataset):
    """``num_images`` scenes of a split; sample ``i`` depends only on the split's seed and ``i``."""

    classes = SHAPE_CLASSES

    def __init__(
        self, split: str = "test", num_images: int = SPLIT_SIZE, image_size: int = 224, seed: int | None = None
    ):
        if split not in SPLIT_SEEDS:
            raise DatasetError(f"unknown dataset.split {split!r}; valid choices: {', '.join(SPLIT_SEEDS)}")
        self.split = split
        self.seed = SPLIT_SEEDS[split] if seed is None else seed
        self.num_images = num_images
        self.image_size = image_size

    def __len__(self) -> int:
        return self.num_images

    def labels(self) -> list[int]:
        """Every scene's label, without rendering (for stratified subsets)."""
        return [int(sample_labels(1, scene_generator(self.seed, i))[0]) for i in range(self.num_images)]

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.num_images:
            raise IndexError(index)
        scene = sample_scenes(1, scene_generator(self.seed, index))
        image, mask, distractors = render_layers(scene, self.image_size)
        id_ = f"shapes-{self.split}-{index:06d}"
        return Sample(normalise(image[0]), int(scene.label[0]), mask[0], id_, distractors[0])
