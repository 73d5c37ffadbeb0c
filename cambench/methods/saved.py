"""Saved maps as a method (``method=saved method.path=FILE_OR_RUN``): the map stored for each image
id of the batch, so the metrics score maps saved by a run (``runner.save_maps=true``) or made by
another tool, without the method that made them (``python -m cambench.evaluate``).

The stored map goes through the base class's normalisation like any method's raw map: ReLU,
min-max, bilinear resize to the input size, min-max again; a run's saved raw maps give its maps
bit for bit. The explained class is the stored one (``targets`` in the file), else the
prediction. One forward pass per image, for the logits. It looks maps up by image id, so it
cannot make maps of new inputs or classes: the metrics that need them (ADCC's coherency, model
randomisation, class sensitivity, sensitivity) fail at start (the ``new_maps`` capability).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import MISSING
from torch import Tensor

from cambench.io.maps import MapsError, load_maps
from cambench.methods.base import SOURCES, CAMMethod, Forward, MethodError, register


@register("saved", SOURCES)
class SavedMaps(CAMMethod):
    paper = "stored maps"
    summary = "Saved maps: the map stored for each image id (cambench.io.maps)"
    checked = "a run's own scores (bit for bit)"
    cost = "1F"
    new_maps = False

    @dataclass
    class Params(CAMMethod.Params):
        path: str = MISSING  # an .npz of maps, a folder of them, or a run saved with runner.save_maps=true

        def check(self) -> None:
            if not Path(self.path).exists():
                raise MethodError(
                    f"method.path {self.path} does not exist: give an .npz of maps or a run saved with maps"
                )

    def setup(self) -> None:
        try:
            self.stored = load_maps(self.path)
        except MapsError as err:
            raise MethodError(f"method.path: {err}") from None
        self.rows = {image: row for row, image in enumerate(self.stored.ids)}

    def lookup(self, ids: Sequence[str]) -> Tensor:
        """The rows of the stored maps of the images ``ids``."""
        missing = [image for image in ids if image not in self.rows]
        if missing:
            raise MethodError(
                f"{len(missing)} of the {len(ids)} images of this batch have no map in {self.path} (e.g. "
                f"{missing[0]}): save the maps on the same dataset, runner.num_images and runner.seed"
            )
        return torch.tensor([self.rows[image] for image in ids])

    def forward(
        self,
        images: Tensor,
        targets: Tensor | None = None,
        gradients: bool | None = None,
        ids: Sequence[str] | None = None,
    ) -> Forward:
        """The forward pass for the stored classes (when the file has them, else ``targets``)."""
        if ids is None:
            raise MethodError("method=saved looks maps up by image id: call it with ids=, one per image")
        if self.stored.targets is not None:
            targets = self.stored.targets[self.lookup(ids)].to(images.device)
        return super().forward(images, targets, gradients, ids)

    def raw_map(self, fw: Forward) -> Tensor:
        return self.stored.maps[self.lookup(fw.ids)].to(fw.images.device)
