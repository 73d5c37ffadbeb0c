"""``shapes``: the embedded synthetic dataset with pixel-exact localisation ground truth.

Each image holds one target object whose class is the label, drawn over a calm gradient
background with a few distractor ellipses that belong to no class. The class is carried by
the object's outline *and* by a class-specific texture inside it, so all class evidence lies
inside the object's mask. Position, size, rotation and colour are independent of the class.
Every scene is generated from ``(seed, index)`` alone, so a split is a pure function of its
seed and no files are needed. Rendering is batched torch code and works at any resolution:
geometry is expressed relative to the image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SHAPE_CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "flower",
    "crescent",
    "hourglass",
)
MAX_DISTRACTORS = 3
EXTENT = 1.3  # every outline lies within this many radii of its centre (hourglass corners: 1.26)


@dataclass(frozen=True)
class Scenes:
    """Parameters of a batch of scenes; lengths are relative to the image size."""

    label: Tensor  # (B,) int64
    centre: Tensor  # (B, 2) x, y in [0, 1]
    radius: Tensor  # (B,)
    angle: Tensor  # (B,) radians
    colour: Tensor  # (B, 3)
    background: Tensor  # (B, 2, 3) gradient end colours
    gradient_angle: Tensor  # (B,)
    noise_seed: Tensor  # (B,) int64, seeds the background noise
    distractor_centre: Tensor  # (B, D, 2)
    distractor_axes: Tensor  # (B, D, 2)
    distractor_angle: Tensor  # (B, D)
    distractor_colour: Tensor  # (B, D, 3)
    distractor_on: Tensor  # (B, D) bool

    def __len__(self) -> int:
        return self.label.shape[0]


def sample_labels(n: int, generator: torch.Generator) -> Tensor:
    """The first draw of :func:`sample_scenes`: ``n`` uniform class labels."""
    return torch.randint(len(SHAPE_CLASSES), (n,), generator=generator)


def sample_scenes(n: int, generator: torch.Generator, labels: Tensor | None = None) -> Scenes:
    """Draw ``n`` scenes; classes are uniform unless ``labels`` is given."""

    def u(*shape: int, lo: float = 0.0, hi: float = 1.0) -> Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=generator)

    if labels is None:
        labels = sample_labels(n, generator)
    radius = u(n, lo=0.14, hi=0.26)
    margin = radius * EXTENT
    centre = margin[:, None] + u(n, 2) * (1 - 2 * margin[:, None])
    n_distractors = torch.randint(1, MAX_DISTRACTORS + 1, (n,), generator=generator)
    return Scenes(
        label=labels,
        centre=centre,
        radius=radius,
        angle=u(n, hi=2 * math.pi),
        colour=u(n, 3, lo=0.05, hi=1.0),
        background=u(n, 2, 3, lo=0.25, hi=0.75),
        gradient_angle=u(n, hi=2 * math.pi),
        noise_seed=torch.randint(2**31 - 1, (n,), generator=generator),
        distractor_centre=u(n, MAX_DISTRACTORS, 2),
        distractor_axes=u(n, MAX_DISTRACTORS, 2, lo=0.04, hi=0.13),
        distractor_angle=u(n, MAX_DISTRACTORS, hi=math.pi),
        distractor_colour=u(n, MAX_DISTRACTORS, 3, lo=0.05, hi=1.0),
        distractor_on=torch.arange(MAX_DISTRACTORS)[None] < n_distractors[:, None],
    )


def _local(xy: Tensor, centre: Tensor, angle: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """Coordinates of the grid ``xy`` (H, W, 2) in each object's rotated, scaled frame."""
    dx = xy[None, ..., 0] - centre[:, 0, None, None]
    dy = xy[None, ..., 1] - centre[:, 1, None, None]
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    return (cos * dx + sin * dy) / scale[:, None, None], (-sin * dx + cos * dy) / scale[:, None, None]


def _polygon(x: Tensor, y: Tensor, sides: int, apothem: float) -> Tensor:
    normals = [math.pi / 2 + 2 * math.pi * k / sides for k in range(sides)]
    return torch.stack([x * math.cos(a) + y * math.sin(a) for a in normals]).amax(0) - apothem


def _outline(label: int, x: Tensor, y: Tensor) -> Tensor:
    """Signed distance-like field of a class outline in unit object coordinates (< 0 inside)."""
    r = torch.hypot(x, y)
    phi = torch.atan2(y, x)
    ax, ay = x.abs(), y.abs()
    name = SHAPE_CLASSES[label]
    if name == "circle":
        return r - 1.0
    if name == "square":
        return torch.maximum(ax, ay) - 0.82
    if name == "triangle":
        return _polygon(x, y, 3, 0.55)
    if name == "cross":
        return torch.minimum(torch.maximum(ax - 0.33, ay - 0.95), torch.maximum(ax - 0.95, ay - 0.33))
    if name == "ring":
        return (r - 0.7).abs() - 0.3
    if name == "flower":
        return r - (0.7 + 0.3 * torch.cos(5 * phi))
    if name == "crescent":
        return torch.maximum(r - 1.0, 0.75 - torch.hypot(x - 0.5, y))
    return torch.maximum(ay - 0.95, ax - 0.75 * ay - 0.12)  # hourglass


def _texture(label: int, x: Tensor, y: Tensor, noise: Tensor) -> Tensor:
    """Class-specific texture in [0, 1], fixed to the object's frame."""
    r = torch.hypot(x, y)
    name = SHAPE_CLASSES[label]
    if name == "circle":  # stripes
        return 0.5 + 0.5 * torch.sin(2 * math.pi * 3 * y)
    if name == "square":  # checkerboard
        return (torch.sin(2 * math.pi * 2.5 * x) * torch.sin(2 * math.pi * 2.5 * y) > 0).float()
    if name == "triangle":  # dots
        fx, fy = torch.frac(x * 3 + 10) - 0.5, torch.frac(y * 3 + 10) - 0.5
        return (fx**2 + fy**2 > 0.09).float()
    if name == "cross":  # concentric rings
        return 0.5 + 0.5 * torch.sin(2 * math.pi * 4 * r)
    if name == "ring":  # spokes
        return 0.5 + 0.5 * torch.sin(12 * torch.atan2(y, x))
    if name == "flower":  # radial gradient, bright centre
        return (1.2 - r).clamp(0, 1)
    if name == "crescent":  # grid lines
        grid = torch.maximum(torch.sin(2 * math.pi * 3 * x).abs(), torch.sin(2 * math.pi * 3 * y).abs())
        return (grid < 0.85).float()
    return noise  # hourglass: speckle


def render(scenes: Scenes, size: int) -> tuple[Tensor, Tensor]:
    """Render scenes to images (B, 3, size, size) in [0, 1] and object masks (B, size, size)."""
    image, mask, _ = render_layers(scenes, size)
    return image, mask


def render_layers(scenes: Scenes, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`render` plus the distractor masks (B, size, size) bool: the union of the distractor
    ellipses where they show, so disjoint from the object mask (the object is drawn over them)."""
    n = len(scenes)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    xy = torch.stack(torch.meshgrid(coords, coords, indexing="xy"), dim=-1)  # (H, W, 2)
    pixel = 1.0 / size

    # Background: a linear gradient between two colours plus mild pixel noise.
    direction = torch.stack([scenes.gradient_angle.cos(), scenes.gradient_angle.sin()], -1)
    t = ((xy[None] - 0.5) * direction[:, None, None]).sum(-1).mul(0.7).add(0.5).clamp(0, 1)
    lo, hi = scenes.background[:, 0], scenes.background[:, 1]
    image = lo[:, :, None, None] + (hi - lo)[:, :, None, None] * t[:, None]
    noise = torch.stack(
        [torch.rand(3, size, size, generator=torch.Generator().manual_seed(int(s))) for s in scenes.noise_seed]
    )
    image = image + 0.06 * (noise - 0.5)

    # Distractors: plain ellipses drawn under the object.
    distractors = torch.zeros(n, size, size, dtype=torch.bool)
    for d in range(MAX_DISTRACTORS):
        axes = scenes.distractor_axes[:, d]
        x, y = _local(xy, scenes.distractor_centre[:, d], scenes.distractor_angle[:, d], axes[:, 0])
        inside = (x**2 + (y * axes[:, 0, None, None] / axes[:, 1, None, None]) ** 2 < 1) & scenes.distractor_on[
            :, d, None, None
        ]
        image = torch.where(inside[:, None], scenes.distractor_colour[:, d, :, None, None], image)
        distractors |= inside

    # The target object: outline, class texture, random colour, 1-pixel anti-aliased edge.
    x, y = _local(xy, scenes.centre, scenes.angle, scenes.radius)
    field = torch.empty(n, size, size)
    texture = torch.empty(n, size, size)
    for label in scenes.label.unique().tolist():
        idx = (scenes.label == label).nonzero().squeeze(1)
        field[idx] = _outline(label, x[idx], y[idx])
        texture[idx] = _texture(label, x[idx], y[idx], noise[idx, 0])
    alpha = (0.5 - field * scenes.radius[:, None, None] / pixel).clamp(0, 1)
    # texture between a darker and a lighter shade of the colour: the same contrast for any colour
    colour = scenes.colour[:, :, None, None]
    fill = 0.6 * colour + 0.4 * texture[:, None]
    image = alpha[:, None] * fill + (1 - alpha[:, None]) * image
    mask = alpha > 0  # every pixel the object touches
    return image.clamp(0, 1), mask, distractors & ~mask


def scene_generator(seed: int, index: int) -> torch.Generator:
    """The generator of sample ``index`` of the split seeded ``seed``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def mask_to_box(mask: Tensor) -> Tensor:
    """Tight box (x0, y0, x1, y1), inclusive pixel indices, of a non-empty (H, W) mask."""
    ys, xs = mask.nonzero(as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max(), ys.max()])
