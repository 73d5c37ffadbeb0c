"""ROAD: RemOve And Debias. Rong, Leemann, Borisov, Kasneci and Kasneci, "A Consistent and
Efficient Evaluation Strategy for Attribution Methods", ICML 2022, https://arxiv.org/abs/2202.00449
(official code: tleemann/road_evaluation, whose imputer pytorch-grad-cam ships).

For each percentage p in ``percentages`` (percent of the pixels removed), MoRF removes the
n_p = round(p / 100 * HW) top-ranked pixels of the map and LeRF the n_p bottom-ranked ones (ranks
from :func:`pixel_ranks`: descending saliency, ties in a seeded order). The removed pixels U are
filled by noisy linear imputation in the model-input (normalised) space: every removed pixel is the
weighted mean of its 8 neighbours inside the image (weight 1/6 for the 4 edge neighbours, 1/12 for
the diagonals, divided by the sum of the weights of the neighbours that lie inside the image),
removed neighbours included, so one linear system per image, the same matrix for every channel:

    on U:  Wsum * x - K * (U x) = K * ((1 - U) image),   K = [[1, 2, 1], [2, 0, 2], [1, 2, 1]] / 12

(K * a zero-padded 3 x 3 convolution, Wsum = K * 1), then N(0, noise^2) noise is added to the
removed pixels only. With s_p the target's score of the imputed image (softmax probability, or the
logit with ``output="logit"``):

    road_morf = mean_p s_p(MoRF)   (lower is better)      road_lerf = mean_p s_p(LeRF)   (higher is better)
    road_difference = road_lerf - road_morf                (higher is better)

2 * len(percentages) forward passes per image; no clean forward pass.

Where this differs from the official imputer (``NoisyLinearImputer``, also pytorch-grad-cam's): that
one builds the sparse system per image with numpy and solves it exactly with
``scipy.sparse.linalg.spsolve`` on the CPU (about 0.6 s an image at 224 px). Here the system on U, a
principal submatrix of the 9-point graph Laplacian and so symmetric positive definite whenever a pixel
is kept, is solved on the device for every (row, channel) at once by conjugate gradients,
preconditioned by a multigrid V-cycle (:class:`Multigrid`) and started from a coarse-to-fine fill
(:func:`coarse_fill`), until each residual is at most ``tol`` times its right-hand side (``max_iter``
at most). At 224 px that takes 7 to 10 iterations whatever the holes (CG from the coarse-to-fine start
alone needed about 360 at 90% removed); at the default ``tol`` 1e-5 the fill lies within about 1e-4 of
spsolve's in normalised units (1% of the noise), and at tol 1e-8 without noise within float32 rounding
(about 1e-6). The noise is drawn from the run's seeded generator (the official code: torch's global one).
pytorch-grad-cam's ``percentile`` q keeps the pixels below ``np.percentile(map, q)``: MoRF removes the
top (100 - q)%, every pixel tied at the threshold (here ties are broken in a seeded order, so exactly
n_p go), and it returns score drops from the clean image; its ``ROADCombined`` is (LeRF - MoRF) / 2 of
those, half of ``road_difference``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cambench.metrics.base import Metric, MetricError, MetricInput, register
from cambench.metrics.deletion_insertion import pixel_ranks
from cambench.models.scorer import OUTPUTS, Scorer, expand_rows, owners

log = logging.getLogger(__name__)

PERCENTAGES = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0)
# the solver's stop (ROAD's defaults too): residual <= TOL x |rhs| per image and channel, or MAX_ITER iterations
TOL, MAX_ITER = 1e-5, 100
# rows imputed at a time: few on a CPU, where the work arrays then stay in cache (4 rows: 2-3x faster
# than 36), many on a GPU (~15 work arrays of rows x 3 x 224 x 224 float32: ~1.3 GB at 144 rows)
SOLVE_ROWS = {"cpu": 4, "cuda": 144}
COARSEST = 64  # the multigrid coarsens down to at most this many pixels, solved there by Cholesky
OMEGA, SWEEPS = 0.9, 1  # damped Jacobi smoothing of the V-cycle: weight, sweeps before and after the coarse grid


def neighbour_sum(v: Tensor) -> Tensor:
    """K * v: every (H, W) plane of ``v`` (..., H, W) convolved with the neighbour weights, zero padding
    (separable: [1, 2, 1] x [1, 2, 1] less 4 at the centre, over 12; 7x faster than conv2d on a CPU)."""
    s = v * 2
    s[..., :, 1:] += v[..., :, :-1]
    s[..., :, :-1] += v[..., :, 1:]
    out = s * 2
    out[..., 1:, :] += s[..., :-1, :]
    out[..., :-1, :] += s[..., 1:, :]
    return out.sub_(v, alpha=4).div_(12)


class MaskedLaplacian:
    """The imputation operator on one grid, v -> U (Wsum v - K * v) for the removed pixels U (N, 1, H, W)
    float and v zero off U: symmetric, positive definite on U when a pixel of every plane is kept."""

    def __init__(self, u: Tensor):
        self.u = u
        self.weight_sum = neighbour_sum(torch.ones_like(u[:1]))
        self.smoother = OMEGA * u / self.weight_sum  # damped Jacobi: OMEGA times the inverse diagonal on U

    def __call__(self, v: Tensor) -> Tensor:
        return self.u * (self.weight_sum * v - neighbour_sum(v))


def imputation_system(images: Tensor, removed: Tensor) -> tuple[MaskedLaplacian, Tensor]:
    """The linear system of the imputation of ``removed`` (N, 1, H, W) bool in ``images`` (N, C, H, W):
    the operator, and the right-hand side U (K * ((1 - U) images)) (N, C, H, W)."""
    u = removed.to(images.dtype)
    return MaskedLaplacian(u), u * neighbour_sum(images * (1 - u))


def prolong(coarse: Tensor, h: int, w: int) -> Tensor:
    """Bilinear 2x upsampling (N, C, ceil(h / 2), ceil(w / 2)) -> (N, C, h, w): half-pixel centres, edges
    clamped, cut to (h, w)."""
    return F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)[..., :h, :w]


def restrict(fine: Tensor, h: int, w: int) -> Tensor:
    """The transpose of :func:`prolong`: (N, C, H, W) -> (N, C, h, w), a stride-2 convolution with
    [1, 3, 3, 1] / 4 in each direction of the fine grid zero-padded to (2h, 2w), then edge-replicated."""
    n, c, fh, fw = fine.shape
    planes = F.pad(fine.reshape(n * c, 1, fh, fw), (0, 2 * w - fw, 0, 2 * h - fh))
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=fine.dtype, device=fine.device)
    kernel = (taps[:, None] * taps).view(1, 1, 4, 4)
    return F.conv2d(F.pad(planes, (1, 1, 1, 1), mode="replicate"), kernel, stride=2).view(n, c, h, w)


class Multigrid:
    """A symmetric multigrid V-cycle for the imputation operator, the CG's preconditioner.

    Grids halve (a coarse pixel is unknown when its 2 x 2 fine pixels are all removed, so every
    coarse system stays definite) down to at most COARSEST pixels, solved there exactly by a batched
    Cholesky factorisation; the coarse operators are the same stencil on the coarse masks; transfers
    are bilinear prolongation and its transpose; SWEEPS damped Jacobi sweeps before and after.
    """

    def __init__(self, fine: MaskedLaplacian):
        self.levels = [fine]
        u = fine.u
        while u.shape[-2] * u.shape[-1] > COARSEST and min(u.shape[-2:]) >= 2:
            u = -F.max_pool2d(-u, 2, ceil_mode=True)
            self.levels.append(MaskedLaplacian(u))
        coarsest = self.levels[-1]
        h, w = coarsest.u.shape[-2:]
        on_u = coarsest.u.double().flatten(1)
        eye = torch.eye(h * w, dtype=torch.float64, device=u.device).view(1, h * w, h, w)
        dense = coarsest(eye * on_u[..., None, None]).flatten(2) + torch.diag_embed(1 - on_u)
        self.factor = torch.linalg.cholesky(dense)

    def __call__(self, r: Tensor, level: int = 0) -> Tensor:
        op = self.levels[level]
        if level == len(self.levels) - 1:
            n, c, h, w = r.shape
            z = torch.cholesky_solve(r.flatten(2).transpose(1, 2).double(), self.factor)
            return op.u * z.transpose(1, 2).reshape(n, c, h, w).to(r.dtype)
        z = op.smoother * r
        for _ in range(SWEEPS - 1):
            z += op.smoother * (r - op(z))
        coarse = self.levels[level + 1]
        correction = self(coarse.u * restrict(r - op(z), *coarse.u.shape[-2:]), level + 1)
        z += op.u * prolong(correction, *r.shape[-2:])
        for _ in range(SWEEPS):
            z += op.smoother * (r - op(z))
        return z


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Inner products (..., 1, 1) of the (H, W) planes."""
    return torch.linalg.vecdot(a.flatten(-2), b.flatten(-2))[..., None, None]


def conjugate_gradients(
    operator: Callable[[Tensor], Tensor],
    rhs: Tensor,
    x: Tensor,
    tol: float,
    max_iter: int,
    preconditioner: Callable[[Tensor], Tensor] | None = None,
    reference: Tensor | None = None,
) -> tuple[Tensor, int]:
    """Solve operator(x) = rhs for every (H, W) plane of ``rhs`` (N, C, H, W) at once from ``x``
    (preconditioned CG): each plane stops once its residual norm is at most ``tol`` times the norm of
    its plane of ``reference`` (default ``rhs``). Returns x and the iterations run (``max_iter`` if a
    plane did not get there: a warning)."""
    precondition = preconditioner or (lambda r: r)
    x = x.clone()
    r = rhs - operator(x)
    z = precondition(r)
    p = z.clone()
    rz = _dot(r, z)
    reference = rhs if reference is None else reference
    limit = tol**2 * _dot(reference, reference)
    for iteration in range(max_iter):
        active = _dot(r, r) > limit
        if not active.any():
            return x, iteration
        ap = operator(p)
        alpha = torch.where(active, rz / _dot(p, ap), 0.0)
        x += alpha * p
        r -= alpha * ap
        z = precondition(r)
        rz_next = _dot(r, z)
        p = z + torch.where(active, rz_next / rz, 0.0) * p
        rz = rz_next
    worst = (_dot(r, r) / limit.clamp_min(torch.finfo(r.dtype).tiny)).max().sqrt().item() * tol
    if worst > tol:
        log.warning("ROAD imputation: %d CG iterations left a relative residual of %.2g > tol %g", max_iter, worst, tol)
    return x, max_iter


def coarse_fill(images: Tensor, u: Tensor) -> Tensor:
    """A start for the solver: the removed pixels U (N, 1, H, W) float filled from the kept pixels at
    the finest scale that has any (pull-push: 2 x 2 means of the kept pixels, recursively, upsampled)."""
    kept = images * (1 - u)
    h, w = images.shape[-2:]
    if not bool(u.any()):
        return kept
    if min(h, w) < 2:
        return kept + u * kept.sum((-2, -1), keepdim=True) / (1 - u).sum((-2, -1), keepdim=True).clamp_min(1)
    share = F.avg_pool2d(1 - u, 2, ceil_mode=True)
    coarse = coarse_fill(F.avg_pool2d(kept, 2, ceil_mode=True) / share.clamp_min(1e-6), (share == 0).to(u.dtype))
    return kept + u * prolong(coarse, h, w)


def solve_imputation(images: Tensor, removed: Tensor, tol: float = TOL, max_iter: int = MAX_ITER) -> tuple[Tensor, int]:
    """The noiseless linear imputation of ``removed`` (N, 1, H, W) bool in ``images`` (N, C, H, W), and the
    CG iterations it took: multigrid-preconditioned CG for the correction d to the start x0 of
    :func:`coarse_fill`, A d = b - A x0 (CG in float32 on x itself stalls near 2e-4 at 224 px, its residual
    lost to rounding; d is smaller and reaches 1e-5 of spsolve at tol 1e-7). Half inputs are solved in float32."""
    work = images.float() if images.dtype in (torch.float16, torch.bfloat16) else images
    operator, rhs = imputation_system(work, removed)
    start = operator.u * coarse_fill(work, operator.u) * (_dot(rhs, rhs) > 0)  # rhs 0: the fill is 0
    defect = rhs - operator(start)
    correction, iterations = conjugate_gradients(
        operator, defect, torch.zeros_like(defect), tol, max_iter, Multigrid(operator), reference=rhs
    )
    return torch.where(removed, start + correction, work).to(images.dtype), iterations


def impute(
    images: Tensor,
    removed: Tensor,
    noise: float,
    generator: torch.Generator | None = None,
    tol: float = TOL,
    max_iter: int = MAX_ITER,
) -> Tensor:
    """Noisy linear imputation (N, C, H, W) of ``removed`` (N, 1, H, W) bool in ``images`` (N, C, H, W):
    the linear fill plus N(0, noise^2) on the removed pixels, one draw of ``images.shape`` from ``generator``."""
    if bool(removed.flatten(1).all(1).any()):
        raise MetricError("ROAD cannot impute an image with every pixel removed: keep at least one pixel")
    filled, iterations = solve_imputation(images, removed, tol, max_iter)
    log.debug("ROAD imputation of %d rows: %d CG iterations", len(images), iterations)
    if noise > 0:
        draws = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        filled = filled.addcmul_(draws, removed.to(images.dtype), value=noise)
    return filled


def removed_counts(pixels: int, percentages: Sequence[float]) -> list[int]:
    """round(p / 100 * pixels) for every p (halves round up); MetricError where that is every pixel."""
    counts = [math.floor(p * pixels / 100 + 0.5) for p in percentages]
    if max(counts) >= pixels:
        raise MetricError(
            f"road.percentages up to {max(percentages)} remove all {pixels} pixels of an image, leaving nothing "
            f"to impute from: use percentages below {100 * (pixels - 0.5) / pixels:.4g}"
        )
    return counts


def road_images(
    images: Tensor,
    maps: Tensor,
    percentages: Sequence[float],
    noise: float,
    tol: float,
    max_iter: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The imputed images (B * 2P, C, H, W) of ``maps`` (B, H, W) on ``images`` (B, C, H, W): image b's row
    b * 2P + m is MoRF at ``percentages[m]`` for m < P, LeRF at ``percentages[m - P]`` after. The ranks are
    drawn first from ``generator``, then the noise, one draw per SOLVE_ROWS rows. Every row is kept
    (B * 2P images: 87 MB for B = 8 at 3 x 224 x 224 float32); the solver's work arrays are bounded by
    SOLVE_ROWS rows at a time.
    """
    b, c, h, w = images.shape
    points = len(percentages)
    per_image = 2 * points
    counts = torch.tensor(removed_counts(h * w, percentages), device=images.device)
    ranks = pixel_ranks(maps, generator).view(b, 1, h, w)
    imputed = torch.empty(b * per_image, c, h, w, dtype=images.dtype, device=images.device)
    chunk = SOLVE_ROWS.get(images.device.type, SOLVE_ROWS["cuda"])
    for start in range(0, b * per_image, chunk):
        rows = slice(start, min(start + chunk, b * per_image))
        _, m = owners(rows, per_image, images.device)
        n = counts[m % points].view(-1, 1, 1, 1)
        rank = expand_rows(ranks, rows, per_image)
        removed = torch.where((m < points).view(-1, 1, 1, 1), rank < n, rank >= h * w - n)
        imputed[rows] = impute(expand_rows(images, rows, per_image), removed, noise, generator, tol, max_iter)
    return imputed


def road(
    scorer: Scorer,
    images: Tensor,
    maps: Tensor,
    targets: Tensor,
    percentages: Sequence[float],
    noise: float,
    output: str,
    tol: float,
    max_iter: int,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Per-image road_morf, road_lerf and road_difference (B,) of ``maps`` (B, H, W) on ``images`` (B, C, H, W):
    the rows of :func:`road_images` scored in the scorer's chunks."""
    points = len(percentages)
    imputed = road_images(images, maps, percentages, noise, tol, max_iter, generator)
    scores = scorer.score_rows(targets, 2 * points, lambda rows: (imputed[rows],), output=output)
    morf, lerf = scores[:, :points].mean(1), scores[:, points:].mean(1)
    return {"road_morf": morf, "road_lerf": lerf, "road_difference": lerf - morf}


@register("road")
class ROAD(Metric):
    """ROAD MoRF (lower is better), LeRF and their difference (higher is better); see the module docstring."""

    names = ("road_morf", "road_lerf", "road_difference")
    lower_is_better = frozenset({"road_morf"})

    @dataclass
    class Params(Metric.Params):
        percentages: tuple[float, ...] = PERCENTAGES
        noise: float = 0.01
        output: str = "probability"
        tol: float = TOL
        max_iter: int = MAX_ITER

        def check(self) -> None:
            if len(self.percentages) == 0 or not all(0 < p < 100 for p in self.percentages):
                raise MetricError(
                    "road.percentages must be percents of pixels removed, each in (0, 100), got "
                    f"{list(self.percentages)} (at 100 every pixel is removed and nothing is left to impute from)"
                )
            if self.noise < 0:
                raise MetricError(f"road.noise must be >= 0, got {self.noise}")
            if self.output not in OUTPUTS:
                raise MetricError(f"road.output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
            if self.tol <= 0 or self.max_iter < 1:
                raise MetricError(f"road needs tol > 0 and max_iter >= 1, got {self.tol} and {self.max_iter}")

    def setup(self) -> None:
        self.percentages = tuple(float(p) for p in self.percentages)

    def score(self, batch: MetricInput) -> dict[str, Tensor]:
        return road(
            self.ctx.scorer,
            batch.images,
            batch.maps,
            batch.targets,
            self.percentages,
            self.noise,
            self.output,
            self.tol,
            self.max_iter,
            self.generator(batch.images.device),
        )
