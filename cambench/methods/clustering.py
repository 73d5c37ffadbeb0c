"""Batched k-means and the elbow rule, on the device, for the methods that group channels
(Cluster-CAM, Cosine-CAM, Ablation-CAM++). No method is registered here.

:func:`kmeans` solves many independent problems at once: points (B, N, D), each problem clustered
R times with its own cluster count (``counts`` (B, R), at most N), with optional per-point
weights (B, N) (0 marks padding). It follows scikit-learn's ``KMeans`` (what the seed project
calls): greedy k-means++ seeding (the first centre drawn by weight, then per step 2 + floor(ln k)
candidates drawn by weight x squared distance, keeping the one that lowers the potential most),
then Lloyd iterations until the centres' squared shift, summed over the centres, is at most
``tol`` times the mean per-feature variance of the points, or ``iterations`` steps; the labels are
then those of the final centres. Each (problem, run) is one row, and the Lloyd steps run only on
the rows whose centres still move. Two differences: an empty cluster keeps its centre (scikit-learn
moves it to a far point), and the random numbers: one set of uniform draws per call, shared by
every problem and run, from the generator given. The methods pass a fresh generator seeded with
the run's seed, so an image's clusters depend only on its own activations and the seed, never on
the other images of its batch or on the batch's position in the run.

:func:`elbow` is the Kneedle rule as kneed 0.8.3 applies it to a convex, decreasing curve (the
seed project's ``KneeLocator(curve="convex", direction="decreasing")``, offline, S = 1), batched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# scikit-learn's KMeans defaults (max_iter, tol), the seed project's: the default of every method's k-means
ITERATIONS, TOLERANCE = 300, 1e-4


@dataclass
class Clusters:
    labels: Tensor  # (B, R, N) long: the cluster of each point in run r, in [0, counts[b, r])
    inertia: Tensor  # (B, R): sum over points of weight x squared distance to the assigned centre


def kmeans(
    points: Tensor,
    counts: Tensor,
    generator: torch.Generator,
    weights: Tensor | None = None,
    iterations: int = ITERATIONS,
    tol: float = TOLERANCE,
) -> Clusters:
    """Cluster the N points of each of B problems R times, run r of problem b into ``counts[b, r]`` clusters."""
    points = points.float()
    b, n, _ = points.shape
    w = points.new_ones(b, n) if weights is None else weights.float()
    # one row per (problem, run); the Lloyd steps run only on the rows that still move
    runs = counts.shape[1]
    x, wx = (points, w) if runs == 1 else (points.repeat_interleave(runs, 0), w.repeat_interleave(runs, 0))
    k = counts.flatten()
    c = int(k.max())
    norms = x.square().sum(-1)
    centres = _plusplus(x, norms, wx, k, c, generator)
    absent = torch.where(torch.arange(c, device=x.device) < k[:, None], 0.0, torch.inf)  # clusters past the count
    # scikit-learn's tolerance: tol x mean over features of the points' variance (padding excluded),
    # as E|x|^2 - |E x|^2 from the norms (no (B, N, D) temporaries)
    total = wx.sum(1)
    mean = (wx[:, None] @ x)[:, 0] / total[:, None]
    tolerance = tol * ((wx * norms).sum(1) / total - mean.square().sum(1)).clamp_min(0) / x.shape[-1]
    rows = torch.arange(len(x), device=x.device)
    xa, wa, na, aa, ta, ca = x, wx, norms, absent, tolerance, centres
    for _ in range(iterations):
        labels = _distances(xa, na, ca, aa).argmin(-1)
        member = torch.nn.functional.one_hot(labels, c).to(xa.dtype) * wa[..., None]  # (M, N, C): bmm beats scatter_add
        sums, sizes = member.transpose(1, 2) @ xa, member.sum(1)[..., None]
        new = torch.where(sizes > 0, sums / sizes.clamp_min(1e-12), ca)  # an empty cluster keeps its centre
        centres[rows] = new
        moving = ((new - ca) ** 2).sum((1, 2)) > ta
        if not moving.any():
            break
        if moving.all():
            ca = new
        else:
            xa, wa, na, aa, ta, ca, rows = (t[moving] for t in (xa, wa, na, aa, ta, new, rows))
    distances, labels = _distances(x, norms, centres, absent).clamp_min(0).min(-1)
    return Clusters(labels.view(b, -1, n), (wx * distances).sum(-1).view(b, -1))


def _distances(x: Tensor, norms: Tensor, centres: Tensor, absent: Tensor | float) -> Tensor:
    """(M, N, C) squared distances of points x (M, N, D), squared norms (M, N), to centres (M, C, D),
    plus ``absent`` (M, C) (inf for clusters that do not exist)."""
    return norms[..., None] - 2 * x @ centres.transpose(1, 2) + ((centres**2).sum(-1) + absent)[:, None]


def _plusplus(x: Tensor, norms: Tensor, w: Tensor, k: Tensor, c: int, generator: torch.Generator) -> Tensor:
    """Greedy k-means++ seeding (scikit-learn's) of rows x (M, N, D) with squared norms (M, N): centres
    (M, C, D), zero past each count k."""
    m, n, d = x.shape
    trials = 2 + int(math.log(c))
    draws = torch.rand(c, trials, generator=generator, device=generator.device).to(x.device)
    rows = torch.arange(m, device=x.device)
    cum = w.cumsum(1)
    first = torch.searchsorted(cum, (draws[0, 0] * cum[:, -1:]).contiguous(), right=True)[:, 0].clamp_max(n - 1)
    centres = x.new_zeros(m, c, d)
    centres[:, 0] = x[rows, first]
    closest = _distances(x, norms, centres[:, :1], 0).clamp_min(0)[..., 0]  # (M, N)
    last = (w > 0).cumsum(1).argmax(1, keepdim=True)  # each row's last real point
    # per row, scikit-learn's 2 + floor(ln k) candidates for its own count k; the others never win
    allowed = torch.arange(trials, device=x.device) < 2 + torch.log(k.float())[:, None].floor()
    for step in range(1, c):
        cum = (w * closest).cumsum(1)
        candidates = torch.minimum(torch.searchsorted(cum, (draws[step] * cum[:, -1:]).contiguous()), last)
        picked = x[rows[:, None], candidates]  # (M, T, D)
        reach = torch.minimum(closest[..., None], _distances(x, norms, picked, 0).clamp_min(0))  # (M, N, T)
        best = (w[..., None] * reach).sum(1).masked_fill(~allowed, torch.inf).argmin(1)
        seeding = (step < k)[:, None]
        centres[:, step] = torch.where(seeding, picked[rows, best], 0.0)
        closest = torch.where(seeding, reach[rows, :, best], closest)
    return centres


def elbow(ks: Tensor, inertia: Tensor, sensitivity: float = 1.0) -> Tensor:
    """The elbow of each curve inertia[b] over the ascending cluster counts ``ks`` (R >= 2): kneed's
    Kneedle for a convex, decreasing curve, offline (the first knee found). -1 where kneed finds none.

    x and y are min-max normalised, the difference curve is (1 - y) - x; at each local maximum i
    (>= both neighbours, the ends compared with themselves) the threshold becomes
    diff[i] - S * mean(step of x), at each local minimum 0; walking from the first maximum, the
    first point whose successor lies below the threshold makes the last maximum the elbow.
    """
    x = (ks.float() - ks[0]) / (ks[-1] - ks[0])
    lo, hi = inertia.amin(1, keepdim=True), inertia.amax(1, keepdim=True)
    diff = 1 - (inertia - lo) / (hi - lo) - x  # NaN for a flat curve: no maximum, no elbow (as kneed)
    before = torch.cat([diff[:, :1], diff[:, :-1]], 1)
    after = torch.cat([diff[:, 1:], diff[:, -1:]], 1)
    maxima, minima = (diff >= before) & (diff >= after), (diff <= before) & (diff <= after)
    limits = diff - sensitivity * (x[1:] - x[:-1]).mean().abs()
    started = torch.zeros(len(diff), dtype=torch.bool, device=diff.device)
    found = torch.zeros_like(started)
    threshold = torch.zeros(len(diff), device=diff.device)
    at = torch.zeros(len(diff), dtype=torch.long, device=diff.device)
    knee = torch.full((len(diff),), -1, dtype=torch.long, device=diff.device)
    for i in range(len(ks) - 1):
        started |= maxima[:, i]
        threshold = torch.where(maxima[:, i], limits[:, i], threshold)
        at = torch.where(maxima[:, i], i, at)
        threshold = torch.where(minima[:, i], 0.0, threshold)
        hit = started & ~found & (diff[:, i + 1] < threshold)
        knee = torch.where(hit, ks[at], knee)
        found |= hit
    return knee
