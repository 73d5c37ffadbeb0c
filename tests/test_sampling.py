"""The images a run evaluates: seeded, stratified by label, in dataset order."""

import pytest
import torch

from cambench.data.base import DatasetError
from cambench.data.sampling import coverage, random_subset, select_images, stratified_subset


def test_sorted_class_folders_give_one_image_per_class_not_the_first_two_classes():
    labels = torch.arange(1000).repeat_interleave(50)  # ImageNet val in sorted class folders
    index = stratified_subset(labels, 64, seed=0)
    assert labels[index].unique().numel() == 64
    assert torch.equal(index, index.sort().values)
    assert torch.equal(index, stratified_subset(labels, 64, seed=0))
    assert not torch.equal(index, stratified_subset(labels, 64, seed=1))


def test_classes_contribute_in_proportion_to_their_size():
    labels = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)
    counts = torch.bincount(labels[stratified_subset(labels, 100, seed=3)], minlength=3)
    assert counts.tolist() == [60, 30, 10]
    assert coverage(labels[stratified_subset(labels, 100, seed=3)]) == "100 images, 3 classes, 10-60 per class"


def test_datasets_without_labels_get_a_seeded_uniform_subset():
    index = random_subset(1000, 10, seed=0)
    assert len(index.unique()) == 10 and torch.equal(index, random_subset(1000, 10, seed=0))


class Unlabelled(torch.utils.data.Dataset):
    def __len__(self):
        return 20

    def __getitem__(self, i):
        return i


def test_select_images_describes_what_it_chose():
    subset, described = select_images(Unlabelled(), 5, seed=0)
    assert len(subset) == 5 and described == "5 random images (labels unknown)"
    everything, described = select_images(Unlabelled(), None, seed=0)
    assert len(everything) == 20 and described == "all 20 images"


def test_more_images_than_the_dataset_holds_is_an_error_naming_the_fix():
    """runner.num_images=50 on 20 images ran 20 without a word: now it is an error (null means all)."""
    with pytest.raises(DatasetError, match=r"runner.num_images=50 but the dataset holds 20 images.*null"):
        select_images(Unlabelled(), 50, seed=0)
    assert len(select_images(Unlabelled(), 20, seed=0)[0]) == 20
