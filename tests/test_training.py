"""The shapes training recipe's building blocks (the full recipe runs in scripts/train_reference.py)."""

import torch
from torch import nn

from cambench.data.base import normalise
from cambench.data.shapes import EXTENT, render, sample_scenes
from cambench.models.training import Recipe, object_crops, recalibrate_batch_norm, train


def test_object_crops_keep_the_whole_object_when_it_fits():
    generator = torch.Generator().manual_seed(0)
    scenes = sample_scenes(32, generator)
    _, masks = render(scenes, 224)
    crops = object_crops(masks[:, None].float(), scenes, 128, generator)
    assert crops.shape == (32, 1, 128, 128)
    fits = scenes.radius * EXTENT * 224 * 2 <= 128
    assert fits.any()
    torch.testing.assert_close(crops[fits].sum((1, 2, 3)), masks[fits].float().sum((1, 2)))


def test_batch_norm_is_re_estimated_as_a_plain_average_and_momentum_restored():
    model = nn.Sequential(nn.BatchNorm2d(3, momentum=0.01)).eval()
    recipe = Recipe(batch_size=4, image_size=32, batch_norm_batches=3)
    recalibrate_batch_norm(model, recipe, torch.Generator().manual_seed(5), "cpu")
    replay = torch.Generator().manual_seed(5)
    batches = [normalise(render(sample_scenes(4, replay), 32)[0]) for _ in range(3)]
    expected_mean = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    expected_var = torch.stack([b.transpose(0, 1).flatten(1).var(1) for b in batches]).mean(0)
    bn = model[0]
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)
    assert bn.momentum == 0.01 and not model.training  # eval mode restored


def test_a_tiny_recipe_runs_end_to_end():
    recipe = Recipe(steps=3, full_image_steps=1, batch_size=4, image_size=64, crop=32, batch_norm_batches=1)
    model = train("mobilenet_v3_small", recipe, progress=False)
    assert not model.training
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 8)
