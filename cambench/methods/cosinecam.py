"""Cosine-CAM, the seed project's own method (tetutaro/class_activation_mapping, 2023:
``cam/models/cosine_cam.py`` with ``cam/base/activation_weight.py`` ("axiom") and
``cam/base/channel_weight.py`` (k-means groups, "abscission" weights)). No paper.

    S_k = mean_ij(g_k A_k) A_k                      (g = dy_c/dA, y_c the logit)
    groups: k-means of the unit vectors U(S_k) / |U(S_k)| (cosine; U: bilinear upsampling to the input)
    G = the elbow of the k-means inertia over G = 3 .. ceil(sqrt(K)); ceil(sqrt(K)) + 1 where there
        is none; 3 where ceil(sqrt(K)) < 4
    M_g = mean_{k in g} S_k,   m_g = minmax(U(M_g))
    s_g = y_c(x m_g + blur(x)(1 - m_g)) - y_c(blur(x)),   w = s / |s|_2
    L = U(sum_g w_g M_g) - median(U(sum_g w_g M_g))      (then ReLU and min-max, as every map)

The elbow is kneed 0.8.3's Kneedle on the convex, decreasing inertia curve (``KneeLocator``, S = 1,
offline; see :func:`cambench.methods.clustering.elbow`): the seed's ``_estimate_n_groups``. The
map is at input resolution, as the seed's: it upsamples the channel maps before grouping, so the
median and the ReLU act on the upsampled map. We cluster at feature resolution with the metric of
the upsampled maps (exactly the same distances, see :func:`upsampled_points`), which is much
cheaper. Groups with a flat map are not scored (w_g = 0); the seed skips spans below 1e-6.

Where we differ from the seed's code: it estimates G on the first image it explains and keeps
that G for every later image (``self.n_groups_`` is cached); we estimate G per image. Its k-means
is scikit-learn's, unseeded by default; ours is seeded (:mod:`cambench.methods.clustering`), so
groups can differ from a scikit-learn run where k-means has several local optima. It scores
logit(sigmoid(y)) (the same number, saturating in float32 for |y| > 17); we use the logit. Its
blur is PIL's GaussianBlur(radius 51) of the raw image; ours is Group-CAM's sampled Gaussian
(kernel 51, sigma 50, reflect padding) of the model input. Cost: 1 forward and 1 backward pass,
then G + 1 forward passes (the G masked inputs and the blurred one), G <= ceil(sqrt(K)) + 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cambench.data.blur import sampled_gaussian_blur
from cambench.methods.base import CAMMethod, Forward, MethodError, minmax, register, upsample, weighted_sum
from cambench.methods.clustering import ITERATIONS, TOLERANCE, elbow, kmeans
from cambench.models.engine import Passes
from cambench.models.scorer import take_rows


def upsampled_points(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, K, h, w) maps -> (B, K, h w) points whose inner products (so distances and cosines) are
    those of the maps bilinearly upsampled to ``size``: U = U_h (x) U_w is separable, so with
    R^T R = U^T U (Cholesky, per axis) R_h A R_w^T has the inner products of U_h A U_w^T."""
    h, w = maps.shape[-2:]
    rh, rw = (_root(n, out, maps.device) for n, out in ((h, size[0]), (w, size[1])))
    return (rh @ maps @ rw.T).flatten(2)


def _root(n: int, out: int, device: torch.device) -> Tensor:
    """R (n, n) upper triangular with R^T R = U^T U, U (out, n) the 1-D linear upsampling (align_corners=False)."""
    eye = torch.eye(n, dtype=torch.float64, device=device)[:, None]
    u = F.interpolate(eye, size=out, mode="linear", align_corners=False)[:, 0].T
    return torch.linalg.cholesky(u.T @ u).T.float()


def group_counts(channels: int, groups: int) -> list[int]:
    """The group counts k-means runs: ``groups``, or the seed's elbow sweep 3 .. ceil(sqrt(K)) plus its
    fallback ceil(sqrt(K)) + 1 (just 3 where ceil(sqrt(K)) < 4); never more than K."""
    if groups:
        return [min(groups, channels)]
    top = math.ceil(math.sqrt(channels))
    return [min(3, channels)] if top < 4 else list(range(3, top + 2))


def group_channels(
    method: CAMMethod, maps: Tensor, size: tuple[int, int], groups: int, cosine: bool, iterations: int, tol: float
) -> tuple[Tensor, Tensor]:
    """k-means groups of the channel maps (B, K, h, w) as the seed forms them: labels (B, K), counts (B,)."""
    points = upsampled_points(maps, size)
    if cosine:
        points = F.normalize(points, dim=-1)
    ks = torch.tensor(group_counts(maps.shape[1], groups), device=maps.device)
    # a fresh generator seeded with the run's seed: an image's groups do not depend on its batch
    clusters = kmeans(points, ks.expand(len(maps), -1), method.engine.generator(maps.device), None, iterations, tol)
    pick = torch.zeros(len(maps), dtype=torch.long, device=maps.device)
    if len(ks) > 1:
        knee = elbow(ks[:-1], clusters.inertia[:, :-1])
        pick = torch.where(knee > 0, knee - ks[0], len(ks) - 1)
    return clusters.labels[torch.arange(len(maps)), pick], ks[pick]


def group_means(maps: Tensor, labels: Tensor, count: int) -> Tensor:
    """(B, G, h, w): the mean of each group's channel maps (zeros for an empty group)."""
    member = F.one_hot(labels, count).float()  # (B, K, G)
    return torch.einsum("bkg,bkhw->bghw", member, maps) / member.sum(1).clamp_min(1)[..., None, None]


def gain_weights(method: CAMMethod, fw: Forward, group_maps: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """(B, G): the seed's "abscission" weights, logit gains of x m_g + blur(x)(1 - m_g) over blur(x),
    L2-normalised per image; 0 for flat group maps (not scored). All rows through the scorer in chunks."""
    b, g = group_maps.shape[:2]
    flat = group_maps.flatten(2)
    varying = flat.amax(2) > flat.amin(2)
    # a zero map after each image's groups: its mask is 0, so its row is blur(x), the baseline
    maps = torch.cat([group_maps, group_maps.new_zeros(b, 1, *group_maps.shape[2:])], 1)
    pairs = torch.cat([varying, varying.new_ones(b, 1)], 1).nonzero()  # image-major, baseline last
    images = pairs[:, 0].cpu()
    blurred = sampled_gaussian_blur(fw.images, kernel_size, sigma)
    size = fw.images.shape[-2:]

    def masked(rows: slice) -> tuple[Tensor]:
        m = minmax(upsample(maps[pairs[rows, 0], pairs[rows, 1]], size))[:, None].to(fw.images.dtype)
        return (take_rows(fw.images, images[rows]) * m + take_rows(blurred, images[rows]) * (1 - m),)

    scores = torch.zeros(b, g + 1, device=group_maps.device)
    scores[pairs[:, 0], pairs[:, 1]] = method.engine.scorer.score(fw.targets[pairs[:, 0]], masked, output="logit")
    return F.normalize((scores[:, :g] - scores[:, g:]) * varying, dim=1)


def median_centred(raw: Tensor, size: tuple[int, int]) -> Tensor:
    """The (B, h, w) map upsampled to ``size``, minus its median (torch's: the lower middle value, as the seed)."""
    up = upsample(raw, size)
    return up - up.flatten(1).median(1).values[:, None, None]


@dataclass
class GroupingParams(CAMMethod.Params):
    """What Cosine-CAM and Cluster-CAM share: k-means and the blur of the masked inputs."""

    iterations: int = ITERATIONS  # k-means iterations at most
    tolerance: float = TOLERANCE  # k-means stops when no centre moves more than this
    kernel_size: int = 51  # the blur of x (the seed's, as Group-CAM's)
    sigma: float = 50.0

    def check_grouping(self, groups: int, smallest: int) -> None:
        """The checks both methods make (``smallest``: the fewest groups the method can use)."""
        if groups and groups < smallest:
            raise MethodError(f"groups must be 0 (the elbow rule) or >= {smallest}, got {groups}")
        if self.iterations < 1 or self.tolerance < 0:
            raise MethodError(f"needs iterations >= 1 and tolerance >= 0, got {self.iterations} and {self.tolerance}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise MethodError(f"needs an odd kernel_size >= 1, got {self.kernel_size}")
        if self.sigma <= 0:
            raise MethodError(f"needs sigma > 0, got {self.sigma}")


@register("cosinecam")
class CosineCAM(CAMMethod):
    paper = "seed project (tetutaro/class_activation_mapping), 2023"
    summary = (
        "Cosine-CAM (seed project): maps mean(g A) A grouped by cosine k-means (elbow G), "
        "w_g = L2-normalised logit gain of x m_g + blur(x)(1 - m_g) over blur(x); median-centred"
    )
    checked = "formula; elbow as kneed 0.8.3 (hand-computed curves)"
    cost = "(2 + G)F + 1B, G <= ceil(sqrt(K)) + 1"
    needs_gradients = True

    @dataclass
    class Params(GroupingParams):
        groups: int = 0  # 0: the elbow rule over k = 3 .. ceil(sqrt(K))

        def check(self) -> None:
            self.check_grouping(self.groups, 1)

    def passes(self, channels: int, positions: int) -> Passes:
        return Passes(forward=2 + max(group_counts(channels, self.groups)), backward=1)

    def raw_map(self, fw: Forward) -> Tensor:
        a, g = fw.activations[-1], fw.gradients[-1]
        maps = (g * a).mean((2, 3), keepdim=True) * a
        size = tuple(fw.images.shape[-2:])
        labels, counts = group_channels(self, maps, size, self.groups, True, self.iterations, self.tolerance)
        group_maps = group_means(maps, labels, int(counts.max()))
        weights = gain_weights(self, fw, group_maps, self.kernel_size, self.sigma)
        return median_centred(weighted_sum(weights, group_maps), size)
