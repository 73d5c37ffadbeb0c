"""The pictures: the overlay puts the hot colour where the map peaks, the grid shows each method's
overlay in its cell, the grid data file round-trips, the curves and bars show the values given, and
the PNGs have the expected size and are not blank."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib import colormaps
from matplotlib.container import ErrorbarContainer
from matplotlib.image import imread

from cambench.analysis.plots import (
    CELL,
    DPI,
    bar_chart,
    curves_plot,
    heatmap_grid,
    load_grid_data,
    overlay,
    save_grid_data,
)
from cambench.methods.base import minmax


def peak(height: int, width: int, row: int, column: int) -> torch.Tensor:
    """A Gaussian bump (H, W) peaking at (row, column)."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return 3 + 5 * torch.exp(-((y - row) ** 2 + (x - column) ** 2) / 8.0)


def test_minmax_normalises_each_map_to_the_unit_range_and_a_flat_map_to_zero():
    maps = torch.stack([peak(8, 8, 2, 2), torch.full((8, 8), 4.0)])
    out = minmax(maps)
    assert out[0].min() == 0 and out[0].max() == 1 and out[0, 2, 2] == 1
    assert (out[1] == 0).all()


def test_overlay_is_hot_where_the_map_peaks_and_cold_where_it_is_lowest():
    image = torch.full((3, 16, 16), 0.5)
    blended = overlay(image, peak(16, 16, 4, 11))
    jet = colormaps["jet"]
    assert blended[4, 11] == pytest.approx(0.25 + 0.5 * np.array(jet(1.0)[:3]))  # dark red
    assert blended[15, 0] == pytest.approx(0.25 + 0.5 * np.array(jet(0.0)[:3]))  # dark blue
    red, _, blue = blended[4, 11]
    assert red > 0.45 and blue < 0.3


def test_heatmap_grid_shows_each_overlay_in_its_cell_and_saves_a_png(tmp_path):
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = {
        "gradcam": torch.stack([peak(8, 8, 1, 6), peak(8, 8, 6, 1)]),
        "centercam": peak(32, 32, 16, 16).expand(2, -1, -1),
    }
    path = tmp_path / "grid.png"
    fig = heatmap_grid(pixels, maps, ids=["a", "b"], labels=["circle", "5"], path=path)
    assert len(fig.axes) == 2 * 3 + 1  # the cells and the colour bar
    grid = np.array(fig.axes[:6]).reshape(2, 3)
    assert [ax.get_title() for ax in grid[0]] == ["image", "gradcam", "centercam"]
    assert grid[0, 0].get_ylabel() == "a\ncircle"
    assert grid[1, 0].get_ylabel() == "b\nclass 5"
    shown = grid[1, 1].images[0].get_array()
    # gradcam's second map peaks at (6, 1) of 8 x 8: bottom left of the 32 x 32 cell, resized bilinearly
    hot = np.unravel_index(np.argmax(shown[..., 0] - shown[..., 2]), shown.shape[:2])
    assert hot[0] >= 20 and hot[1] <= 10
    assert np.asarray(grid[0, 0].images[0].get_array()) == pytest.approx(pixels[0].permute(1, 2, 0).numpy())
    png = imread(path)
    assert png.shape[:2] == (round((CELL * 2 + 0.4) * DPI), round((CELL * 3 + 1.2) * DPI))
    assert png[..., :3].std() > 0.05


def test_grid_data_round_trip_in_small_dtypes(tmp_path):
    pixels = torch.rand(3, 3, 16, 16)
    maps = 100 * torch.rand(3, 16, 16)
    save_grid_data(tmp_path / "grid.npz", "gradcam", ["a", "b", "c"], pixels, maps, labels=[0, 5, 7])
    with np.load(tmp_path / "grid.npz") as raw:
        assert raw["pixels"].dtype == np.uint8 and raw["maps"].dtype == np.float16
    data = load_grid_data(tmp_path / "grid.npz")
    assert data.method == "gradcam" and data.ids == ["a", "b", "c"] and data.labels == ["0", "5", "7"]
    assert (data.pixels - pixels).abs().max() <= 0.5 / 255 + 1e-6
    assert (data.maps - minmax(maps)).abs().max() < 1e-3
    save_grid_data(tmp_path / "other.npz", "x", ["a"], pixels[:1], maps[:1])
    assert load_grid_data(tmp_path / "other.npz").labels == [""]


def test_curves_plot_draws_every_curve_with_its_area(tmp_path):
    x = np.linspace(0, 1, 5)
    rows = []
    for explainer, curve, y in [
        ("gradcam", "deletion", 1 - x),
        ("gradcam", "insertion", x),
        ("gradcam", "deletion_lerf", np.ones(5)),
        ("fakecam", "deletion", 1 - x**2),
        ("fakecam", "insertion", x**2),
    ]:
        rows += [{"explainer": explainer, "curve": curve, "x": a, "mean": b} for a, b in zip(x, y, strict=True)]
    fig = curves_plot(pd.DataFrame(rows), baselines={"fakecam"}, title="t", path=tmp_path / "curves.png")
    deletion, insertion = fig.axes[:2]
    assert [deletion.get_title(), insertion.get_title()] == ["deletion", "insertion"]
    labels = [line.get_label() for line in deletion.get_lines()]
    assert labels == ["gradcam: AUC 0.500", "gradcam lerf: AUC 1.000", "fakecam (baseline): AUC 0.656"]
    styles = [line.get_linestyle() for line in deletion.get_lines()]
    assert styles == ["-", "--", ":"]
    assert imread(tmp_path / "curves.png")[..., :3].std() > 0.05


def test_bar_chart_bars_are_the_means_with_their_intervals(tmp_path):
    rows = pd.DataFrame(
        [
            ("gradcam", "method", "deletion", 0.2, 0.1, 0.35),
            ("scorecam", "method", "deletion", 0.3, 0.25, 0.4),
            ("fakecam", "baseline", "deletion", 0.6, 0.5, 0.7),
            ("gradcam", "method", "insertion", 0.7, 0.6, 0.8),
            ("scorecam", "method", "insertion", 0.6, 0.5, 0.7),
            ("fakecam", "baseline", "insertion", 0.5, 0.4, 0.6),
        ],
        columns=["method", "kind", "column", "mean", "ci95_low", "ci95_high"],
    )
    fig = bar_chart(rows, ["deletion", "insertion"], {"deletion"}, "t", tmp_path / "bars.png")
    deletion = fig.axes[0]
    assert [bar.get_width() for bar in deletion.patches] == pytest.approx([0.2, 0.3, 0.6])
    assert deletion.get_title() == "deletion (lower is better)"
    assert [t.get_text() for t in deletion.get_yticklabels()] == ["gradcam", "scorecam", "fakecam (baseline)"]
    assert [bar.get_hatch() for bar in deletion.patches] == ["", "", "//"]
    errorbar = next(c for c in deletion.containers if isinstance(c, ErrorbarContainer))
    caps = errorbar.lines[2][0].get_segments()  # the error bars' horizontal extent
    assert [tuple(seg[:, 0]) for seg in caps] == pytest.approx([(0.1, 0.35), (0.25, 0.4), (0.5, 0.7)])
    assert imread(tmp_path / "bars.png")[..., :3].std() > 0.05


def test_a_run_with_save_grid_writes_its_grid_of_the_method_and_baselines(tmp_path):
    from hydra import compose, initialize_config_dir

    from cambench.app.config import validate
    from cambench.app.run import GRID_IMAGES, run

    conf = str(Path(__file__).resolve().parent.parent / "conf")
    overrides = ["runner.num_images=12", "runner.batch_size=5", "dataset.image_size=64", "runner.progress=false"]
    overrides += ["metrics=map_complexity", "runner.bootstrap=20", "runner.baselines=[fakecam,centercam]"]
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose(
            "config", overrides=[*overrides, "runner.save_grid=true", f"runner.results_table={tmp_path}/t.csv"]
        )
    result = run(validate(cfg), tmp_path / "run")
    data = load_grid_data(tmp_path / "run" / "grid.npz")
    # the first 8 images across the batches of 5, the method's maps min-max normalised
    assert data.method == "gradcam" and data.ids == result.rows["id"].tolist()[:GRID_IMAGES]
    assert data.labels == [str(label) for label in result.rows["label"][:GRID_IMAGES]]
    assert data.pixels.shape == (GRID_IMAGES, 3, 64, 64) and 0 <= data.pixels.min() < data.pixels.max() <= 1
    assert data.maps.amax((1, 2)).tolist() == [1.0] * GRID_IMAGES and data.maps.amin((1, 2)).tolist() == [0.0] * 8
    picture = imread(tmp_path / "run" / "grid.png")
    # 8 rows, 4 columns (the image, gradcam, fakecam, centercam) and the colour bar
    assert picture.shape[0] == pytest.approx((CELL * GRID_IMAGES + 0.4) * DPI, abs=2)
    assert picture.shape[1] == pytest.approx((CELL * 4 + 1.2) * DPI, abs=2)
