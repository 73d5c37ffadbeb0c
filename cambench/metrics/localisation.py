"""Ground-truth localisation: how well the map L (B, H, W) in [0, 1] at input size falls on the
ground-truth mask M (B, H, W) bool of the explained object (dataset=shapes, or ImageNet boxes).

    pointing_game         1 if the map's maximum lies in M grown by a disk of ``tolerance`` pixels
                          (a mask pixel within that Euclidean distance of the maximum). Zhang et al.,
                          "Top-down Neural Attention by Excitation Backprop", ECCV 2016 / IJCV 2018,
                          https://arxiv.org/abs/1608.00507 (their protocol: 15 px)
    energy_pointing_game  sum_M L / sum L. Wang et al., "Score-CAM: Score-Weighted Visual Explanations
                          for Convolutional Neural Networks", CVPR Workshops 2020, https://arxiv.org/abs/1910.01279
    iou                   |{L >= threshold} & M| / |{L >= threshold} | M|
    auroc                 ROC AUC of the pixel values of L as scores for the pixels of M: the Mann-Whitney
                          U / (|M| |not M|) with mid-ranks (ties count 1/2; sklearn's roc_auc_score)
    relevance_mass        sum_M max(L, 0) / sum max(L, 0)
    relevance_rank        |top-k pixels of L & M| / k with k = |M|. Both: Arras, Osman and Samek,
                          "CLEVR-XAI: A benchmark dataset for the ground truth evaluation of neural network
                          explanations", Information Fusion 81, 2022, https://arxiv.org/abs/2003.07258

All higher is better, in [0, 1]. Ties are counted in expectation over a uniformly random order of
the tied pixels: the pointing game scores the share of the maximal pixels that hit (so 0 or 1
when the maximum is unique, the chance rate |M grown| / HW for a constant map, where Quantus's
any-maximal-pixel rule would score Fake-CAM's all-but-one-pixel map a hit on every image), the
rank accuracy shares the slots left at the k-th value among the pixels tied there, and the AUROC
uses mid-ranks (its expectation under random tie-breaking; 0.5 for a constant map). The mass
ratios are 0 / 0, NaN, for an all-zero map (left out of the means); every column is NaN for an
empty mask (nothing to localise). On the runner's maps (>= 0) relevance_mass equals
energy_pointing_game: they differ only for signed maps.

``distractor_mass`` (its own metric: it needs the distractor masks D, which only dataset=shapes
has): sum_D L / sum L, the share of the map on the distractor blobs (objects of no class, drawn
under the object: D and M are disjoint); lower is better, NaN for an all-zero map.

Everything is batched on the device; no per-image loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cambench.metrics.base import Metric, MetricError, MetricInput, register

NAMES = ("pointing_game", "energy_pointing_game", "iou", "auroc", "relevance_mass", "relevance_rank")


def dilate(masks: Tensor, radius: int) -> Tensor:
    """``masks`` (B, H, W) bool grown by a disk: every pixel within Euclidean distance ``radius`` of a mask
    pixel (the masks themselves for radius 0). The disk is a stack of rows |dx| <= sqrt(r^2 - dy^2): each
    row is a window sum of a running count along x, and the rows, shifted by dy, are or-ed together."""
    if radius == 0:
        return masks
    r, width = radius, masks.shape[-1]
    counts = F.pad(masks.to(torch.int32), (r + 1, r)).cumsum(-1)  # counts[..., j]: mask pixels left of j - r
    rows = {}  # half-width a -> (B, H + 2r, W) bool: a mask pixel within a pixels along x, padded by r in y
    for a in {math.isqrt(r * r - dy * dy) for dy in range(r + 1)}:
        window = counts[..., r + a + 1 : r + a + 1 + width] - counts[..., r - a : r - a + width]
        rows[a] = F.pad(window > 0, (0, 0, r, r))
    height = masks.shape[-2]
    grown = torch.zeros_like(masks, dtype=torch.bool)
    for dy in range(-r, r + 1):
        grown |= rows[math.isqrt(r * r - dy * dy)][:, r + dy : r + dy + height]
    return grown


def _flat(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    return maps.flatten(1).double(), masks.flatten(1).bool()


def _nan_where_empty(values: Tensor, masks: Tensor) -> Tensor:
    """``values`` (B,) as float32, NaN where the mask (B, ...) has no pixel."""
    return torch.where(masks.flatten(1).any(1), values, torch.nan).float()


def share(maps: Tensor, region: Tensor) -> Tensor:
    """sum of ``maps`` (B, H, W) over ``region`` (B, H, W) bool / sum of ``maps``, per image (B,),
    in float64; NaN where the map sums to 0."""
    flat, inside = _flat(maps, region)
    total = flat.sum(1)
    return torch.where(total != 0, (flat * inside).sum(1) / total.where(total != 0, 1.0), torch.nan)


def pointing_game(maps: Tensor, masks: Tensor, tolerance: int) -> Tensor:
    """Hit (1) or miss (0) of the map's maximum on the mask grown by ``tolerance`` pixels, per image (B,);
    with tied maxima, the share of them that hit; NaN for an empty mask."""
    flat, target = _flat(maps, dilate(masks, tolerance))
    top = flat == flat.amax(1, keepdim=True)
    hits = (top & target).sum(1).double() / top.sum(1)
    return _nan_where_empty(hits, masks)


def energy_pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    """sum of the map inside the mask / sum of the map (B,); NaN for an all-zero map or an empty mask."""
    return _nan_where_empty(share(maps, masks), masks)


def iou(maps: Tensor, masks: Tensor, threshold: float) -> Tensor:
    """IoU of {map >= threshold} with the mask (B,); NaN for an empty mask."""
    predicted, truth = (maps >= threshold).flatten(1), masks.flatten(1).bool()
    union = (predicted | truth).sum(1)
    return _nan_where_empty((predicted & truth).sum(1).double() / union.clamp_min(1), masks)


def auroc(maps: Tensor, masks: Tensor) -> Tensor:
    """ROC AUC of the map's pixels as scores for the mask's (B,), by the Mann-Whitney U with mid-ranks;
    NaN where the mask is empty or covers the image."""
    flat, positive = _flat(maps, masks)
    ordered, order = flat.sort(1)
    positive = positive.gather(1, order)
    n = ordered.shape[1]
    index = torch.arange(n, device=flat.device).expand_as(ordered)
    change = ordered[:, 1:] != ordered[:, :-1]  # a new value starts at j + 1
    edge = torch.ones_like(change[:, :1])
    first = torch.where(torch.cat([edge, change], 1), index, 0).cummax(1).values  # of each tie group
    last = torch.where(torch.cat([change, edge], 1), index, n - 1).flip(1).cummin(1).values.flip(1)
    ranks = (first + last).double() / 2 + 1  # 1-based mid-rank
    n_pos = positive.sum(1).double()
    n_neg = n - n_pos
    u = (ranks * positive).sum(1) - n_pos * (n_pos + 1) / 2
    defined = (n_pos > 0) & (n_neg > 0)
    return torch.where(defined, u / (n_pos * n_neg).clamp_min(1), torch.nan).float()


def relevance_mass(maps: Tensor, masks: Tensor) -> Tensor:
    """sum of the positive map inside the mask / sum of the positive map (B,); NaN for a map with no
    positive pixel or an empty mask."""
    return _nan_where_empty(share(maps.clamp_min(0), masks), masks)


def relevance_rank(maps: Tensor, masks: Tensor) -> Tensor:
    """Share of the top-k pixels of the map that lie in the mask, k = |mask|, per image (B,); the pixels
    tied at the k-th value share the slots left in expectation; NaN for an empty mask."""
    flat, positive = _flat(maps, masks)
    k = positive.sum(1)
    kth = flat.sort(1, descending=True).values.gather(1, (k - 1).clamp_min(0)[:, None])
    above, tied = flat > kth, flat == kth
    n_above = above.sum(1)
    hits = (above & positive).sum(1) + (k - n_above) * (tied & positive).sum(1).double() / tied.sum(1)
    return _nan_where_empty(hits / k.clamp_min(1), masks)


def distractor_mass(maps: Tensor, distractors: Tensor) -> Tensor:
    """sum of the map on the distractors / sum of the map (B,); NaN for an all-zero map."""
    return share(maps, distractors).float()


def localisation(maps: Tensor, masks: Tensor, tolerance: int, threshold: float) -> dict[str, Tensor]:
    """Every column of :class:`Localisation` for maps (B, H, W) and masks (B, H, W) bool."""
    return {
        "pointing_game": pointing_game(maps, masks, tolerance),
        "energy_pointing_game": energy_pointing_game(maps, masks),
        "iou": iou(maps, masks, threshold),
        "auroc": auroc(maps, masks),
        "relevance_mass": relevance_mass(maps, masks),
        "relevance_rank": relevance_rank(maps, masks),
    }


@register("localisation")
class Localisation(Metric):
    """Pointing game, energy-based pointing game, IoU, AUROC, relevance mass and rank accuracy against
    the ground-truth masks; see the module docstring."""

    names = NAMES
    requires = frozenset({"masks"})

    @dataclass
    class Params(Metric.Params):
        tolerance: int = 0
        threshold: float = 0.5

        def check(self) -> None:
            if self.tolerance < 0 or not 0 <= self.threshold <= 1:
                raise MetricError(
                    "localisation needs tolerance >= 0 (pixels) and threshold in [0, 1], "
                    f"got {self.tolerance} and {self.threshold}"
                )

    def score(self, batch: MetricInput) -> dict[str, Tensor]:
        return localisation(batch.maps, batch.masks, self.tolerance, self.threshold)


@register("distractor_mass")
class DistractorMass(Metric):
    """The share of the map on the distractors (dataset=shapes); see the module docstring."""

    names = ("distractor_mass",)
    lower_is_better = frozenset({"distractor_mass"})
    requires = frozenset({"distractors"})

    def score(self, batch: MetricInput) -> dict[str, Tensor]:
        return {"distractor_mass": distractor_mass(batch.maps, batch.distractors)}
