"""The scripts of examples/ run on tiny inputs (the README points users to them)."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *argv: str, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def test_a_torchvision_model_on_a_folder_of_images(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    for folder in ("cat", "dog"):
        (tmp_path / "images" / folder).mkdir(parents=True)
        for i in range(2):
            pixels = (rng.random((40, 52, 3)) * 255).astype("uint8")
            Image.fromarray(pixels).save(tmp_path / "images" / folder / f"{i}.png")
    argv = [str(tmp_path / "images"), "--model", "mobilenet_v3_small", "--weights", "random", "--methods", "gradcam"]
    argv += ["--images", "3", "--batch-size", "2", "--out", str(tmp_path / "out")]
    run_example("torchvision_folder.py", *argv, monkeypatch=monkeypatch)
    printed = capsys.readouterr().out
    assert "images scored: {'fakecam': 3, 'gradcam': 3}" in printed
    assert re.search(r"gradcam\s+adcc_per_image\s+3\s", printed)
    rows = pd.read_csv(tmp_path / "out" / "per_image_gradcam.csv")
    assert rows["id"].tolist() == ["cat/0.png", "cat/1.png", "dog/0.png"]


def test_a_custom_model_with_maps_of_another_library(monkeypatch, capsys):
    run_example("custom_model_other_library.py", "--images", "2", "--size", "32", monkeypatch=monkeypatch)
    printed = capsys.readouterr().out
    assert "pytorch-grad-cam's Grad-CAM, scored by cambench:" in printed and "adcc_per_image" in printed
    difference = float(re.search(r"largest difference from cambench's own Grad-CAM: (\S+)", printed).group(1))
    assert difference < 1e-5
