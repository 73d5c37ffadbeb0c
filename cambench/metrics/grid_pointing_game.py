"""The grid pointing game: Böhle, Fritz and Schiele, "B-cos Networks: Alignment is All We Need for
Interpretability", CVPR 2022, https://arxiv.org/abs/2205.10268 (the localisation metric of their code).

On a mosaic of n x n images of distinct classes (``dataset.grid=n``, built by ``cambench.data.grid``),
the map L (B, H, W) of one cell's class is scored by the share of its positive attribution that lies
in that cell C (the item's mask):

    grid_pointing_game = sum_C max(L, 0) / sum max(L, 0)

in [0, 1], higher is better; chance (a uniform map) is 1 / n^2. NaN for an all-zero map (0 / 0, left
out of the means). The core is the relevance mass of ``localisation`` with the cell as the mask; on the
runner's maps (ReLU, min-max to [0, 1]) max(L, 0) = L. B-cos averaged their attributions with a 15 px
window before scoring, for pixel-level maps; CAMs are smooth already, so no smoothing here.
No forward pass.
"""

from __future__ import annotations

from torch import Tensor

from cambench.metrics.base import Metric, MetricInput, register
from cambench.metrics.localisation import relevance_mass


def grid_pointing_game(maps: Tensor, cells: Tensor) -> Tensor:
    """sum of max(``maps``, 0) in ``cells`` / sum of max(``maps``, 0), per image (B,) float32, for maps
    (B, H, W) and cell regions (B, H, W) bool; NaN for a map with no positive pixel."""
    return relevance_mass(maps, cells)


@register("grid_pointing_game")
class GridPointingGame(Metric):
    """The share of the map's positive attribution in the explained class's cell of the mosaic
    (needs ``dataset.grid``); see the module docstring."""

    names = ("grid_pointing_game",)
    requires = frozenset({"grid"})

    def score(self, batch: MetricInput) -> dict[str, Tensor]:
        return {"grid_pointing_game": grid_pointing_game(batch.maps, batch.masks)}
