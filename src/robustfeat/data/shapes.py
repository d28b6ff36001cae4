"""``shapes``: the embedded, procedurally generated dataset (demo scale, CI, localization tests).

Ten classes of filled shapes (circle, square, triangle, cross, ring, star, diamond, hexagon,
L, T) at a random position, size, rotation and colour over a textured, noisy background.
Every sample comes with its ground-truth object mask, so CAM / localization metrics can be
checked against the truth.

Rendering is vectorised over the whole batch: each pixel centre is mapped into the object's
normalised frame (unit circumscribed disk) and its signed distance to the class's shape is
computed (shapes are unions of convex polygons, or radius tests for circle and ring). The mask
is distance <= 0; antialiasing blends the one-pixel band across the outline. There is no
per-image Python loop; the only loop is over the ten classes.

Geometry: the object's *size* is the diameter of its circumscribed disk as a fraction of the
image side, drawn uniformly from ``size_range``; the whole disk lies inside the image.

Spurious correlation (Waterbirds-style): with ``spurious_p > 0`` a train image's background hue
is its class's hue (``k / num_classes``) with probability ``spurious_p``; test backgrounds are
always random, so a model that learned the background colour fails on test.

Train and test are drawn with different seeds derived from one ``render_seed``, so they never
share images, and the same options give byte-identical data on every machine.

Difficulty: the defaults (diameter 0.4-0.8 of the side, rotation within ±30°) are chosen so a
small CNN learns the task in a couple of epochs without solving it: ResNet-20 (width 8), Adam
one-cycle, batch 64, 2 epochs of the 10k train images -> 70 % test accuracy (circle / square /
hexagon and cross / star are the confusions). Smaller objects and full rotation are much
harder: (0.25, 0.6) with ±180° gave 36 % under the same budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from ..errors import check
from ._registry import register_dataset
from ._seed import make_generator
from .base import ImageDataset

SHAPE_NAMES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "star",
    "diamond",
    "hexagon",
    "L",
    "T",
)
RING_INNER_RADIUS = 0.55
_CHUNK = 512  # images rendered at once (per-pixel temporaries stay cache-sized)


def _rect(u0: float, v0: float, u1: float, v1: float) -> list[tuple[float, float]]:
    return [(u0, v0), (u1, v0), (u1, v1), (u0, v1)]


def _regular(n: int, radius: float = 1.0, start_deg: float = 90.0) -> list[tuple[float, float]]:
    angles = [math.radians(start_deg + 360.0 * i / n) for i in range(n)]
    return [(radius * math.cos(a), radius * math.sin(a)) for a in angles]


def _star_pieces(points: int = 5, inner: float = 0.42) -> list[list[tuple[float, float]]]:
    """A star as its inner polygon plus one triangle per tip (all convex)."""
    step = 360.0 / points
    core = _regular(points, inner, 90.0 + step / 2)
    tips = []
    for i in range(points):
        tip = math.radians(90.0 + step * i)
        left, right = tip - math.radians(step / 2), tip + math.radians(step / 2)
        tips.append(
            [
                (inner * math.cos(left), inner * math.sin(left)),
                (math.cos(tip), math.sin(tip)),
                (inner * math.cos(right), inner * math.sin(right)),
            ]
        )
    return [core, *tips]


# Each polygon shape is a union of convex polygons inside the unit disk (normalised frame).
_POLYGONS: dict[str, list[list[tuple[float, float]]]] = {
    "square": [_rect(-math.sqrt(0.5), -math.sqrt(0.5), math.sqrt(0.5), math.sqrt(0.5))],
    "triangle": [_regular(3)],
    "cross": [_rect(-0.25, -0.96, 0.25, 0.96), _rect(-0.96, -0.25, 0.96, 0.25)],
    "star": _star_pieces(),
    "diamond": [[(0.0, -1.0), (0.55, 0.0), (0.0, 1.0), (-0.55, 0.0)]],
    "hexagon": [_regular(6)],
    "L": [_rect(-0.6, -0.75, -0.1, 0.75), _rect(-0.6, -0.75, 0.6, -0.25)],
    "T": [_rect(-0.7, 0.3, 0.7, 0.7), _rect(-0.2, -0.95, 0.2, 0.3)],
}


def _edge_lines(polygon: list[tuple[float, float]]) -> list[tuple[float, float, float]]:
    """Outward unit normals and offsets (nx, ny, c) of a convex polygon's edges."""
    edges = list(zip(polygon, polygon[1:] + polygon[:1], strict=True))
    area2 = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in edges)
    orientation = 1.0 if area2 > 0 else -1.0  # counter-clockwise: outward normal is (dy, -dx)
    lines = []
    for (x0, y0), (x1, y1) in edges:
        length = math.hypot(x1 - x0, y1 - y0)
        nx, ny = orientation * (y1 - y0) / length, -orientation * (x1 - x0) / length
        lines.append((nx, ny, nx * x0 + ny * y0))
    return lines


_EDGES = {name: [_edge_lines(p) for p in pieces] for name, pieces in _POLYGONS.items()}


def shape_sdf(name: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance of points (u, v) of the normalised frame to shape ``name`` (< 0 inside).

    Exact inside every shape; outside a polygon it is the distance to the nearest edge *line*
    (a lower bound near corners), which is all antialiasing needs.
    """
    if name in ("circle", "ring"):
        rho = torch.sqrt(u * u + v * v)
        outer = rho - 1.0
        return outer if name == "circle" else torch.maximum(outer, RING_INNER_RADIUS - rho)
    union = None
    for lines in _EDGES[name]:  # a convex piece: the largest edge distance
        piece = None
        for nx, ny, c in lines:
            d = nx * u + ny * v - c
            piece = d if piece is None else torch.maximum(piece, d)
        union = piece if union is None else torch.minimum(union, piece)
    return union


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HSV in [0, 1] -> RGB in [0, 1], shape (..., 3)."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + h.unsqueeze(-1) * 6.0) % 6.0
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return v.unsqueeze(-1) * (1.0 - s.unsqueeze(-1) * ramp)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


@dataclass(frozen=True)
class ShapesStyle:
    """How images are drawn (the options of ``shapes`` other than counts and seed)."""

    image_size: int = 32
    size_range: tuple[float, float] = (0.4, 0.8)  # object diameter / image side
    spurious_p: float = 0.0  # P(background hue = class hue)
    noise: float = 0.05  # std of per-pixel Gaussian noise
    texture: float = 0.35  # largest brightness modulation of the background gratings
    max_rotation: float = 30.0  # degrees, uniform in [-max, max]
    antialias: bool = True


def _render_chunk(
    labels: torch.Tensor, style: ShapesStyle, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render one chunk of images (uint8 N,3,S,S) and their object masks (bool N,S,S)."""
    n, side = labels.shape[0], style.image_size
    # ---- per-image parameters
    diameter = _uniform(n, *style.size_range, generator) * side
    radius = diameter / 2
    cx = radius + torch.rand(n, generator=generator) * (side - diameter)
    cy = radius + torch.rand(n, generator=generator) * (side - diameter)
    angle = _uniform(n, -style.max_rotation, style.max_rotation, generator) * (math.pi / 180)
    bg_hue = torch.rand(n, generator=generator)
    if style.spurious_p > 0:
        use_class = torch.rand(n, generator=generator) < style.spurious_p
        bg_hue = torch.where(use_class, labels.float() / len(SHAPE_NAMES), bg_hue)
    fg_hue = (bg_hue + _uniform(n, 0.2, 0.8, generator)) % 1.0
    # The object differs from the background in hue (by 0.2-0.8) and in brightness (by 0.25-0.5,
    # up or down), so its outline is always a visible edge whatever the colours.
    bg_value = _uniform(n, 0.25, 0.85, generator)
    delta = _uniform(n, 0.25, 0.5, generator)
    up = (torch.rand(n, generator=generator) < 0.5) & (bg_value + delta <= 1.0) | (
        bg_value - delta < 0.1
    )
    fg_value = torch.where(up, bg_value + delta, bg_value - delta).clamp(0.05, 1.0)
    bg_rgb = hsv_to_rgb(bg_hue, _uniform(n, 0.25, 0.75, generator), bg_value)
    fg_rgb = hsv_to_rgb(fg_hue, _uniform(n, 0.4, 1.0, generator), fg_value)

    # ---- coverage of each pixel by the object, from the signed distance at the pixel centre
    pix = torch.arange(side, dtype=torch.float32) + 0.5
    py, px = torch.meshgrid(pix, pix, indexing="ij")
    dx = (px.reshape(1, -1) - cx[:, None]) / radius[:, None]
    dy = (cy[:, None] - py.reshape(1, -1)) / radius[:, None]  # v axis points up
    cos, sin = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    distance = torch.empty_like(u)
    for k, name in enumerate(SHAPE_NAMES):
        rows = (labels == k).nonzero().squeeze(1)
        if rows.numel():
            distance[rows] = shape_sdf(name, u[rows], v[rows]) * radius[rows, None]  # in pixels
    distance = distance.view(n, side, side)
    # antialiasing: a pixel is covered linearly over the one-pixel band across the outline
    coverage = (0.5 - distance).clamp_(0, 1) if style.antialias else (distance <= 0).float()

    # ---- textured background: brightness modulated by two random gratings per image
    grating = torch.zeros(n, side, side)
    for _ in range(2):
        freq = _uniform(n, 1.0, 6.0, generator) * (2 * math.pi / side)
        theta = torch.rand(n, generator=generator) * math.pi
        phase = torch.rand(n, generator=generator) * (2 * math.pi)
        proj = torch.cos(theta)[:, None, None] * px + torch.sin(theta)[:, None, None] * py
        grating += 0.5 * torch.sin(freq[:, None, None] * proj + phase[:, None, None])
    amplitude = _uniform(n, style.texture / 3, style.texture, generator)[:, None, None]
    background = bg_rgb[:, :, None, None] * (1 + amplitude * grating)[:, None]
    alpha = coverage[:, None]
    image = background * (1 - alpha) + fg_rgb[:, :, None, None] * alpha
    image += style.noise * torch.randn(image.shape, generator=generator)
    pixels = image.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return pixels, distance <= 0


@contextmanager
def _one_intra_op_thread() -> Iterator[None]:
    """Run torch ops single-threaded for a while.

    Rendering is many small element-wise ops: a second thread gains little on an idle machine,
    but on a loaded one (several processes per core) each op waits for a descheduled thread;
    measured on this 2-core machine under load: 4000 images in 3 s with 1 thread, 27-54 s with 2.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def generate_shapes(n: int, generator: torch.Generator, style: ShapesStyle) -> ImageDataset:
    """``n`` balanced samples (labels ``arange(n) % 10``, shuffled) drawn from ``generator``."""
    num_classes, side = len(SHAPE_NAMES), style.image_size
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
    images = torch.empty(n, 3, side, side, dtype=torch.uint8)
    masks = torch.empty(n, side, side, dtype=torch.bool)
    with _one_intra_op_thread():
        for start in range(0, n, _CHUNK):
            part = slice(start, start + _CHUNK)
            images[part], masks[part] = _render_chunk(labels[part], style, generator)
    return ImageDataset(
        images=images,
        labels=labels,
        num_classes=num_classes,
        class_names=list(SHAPE_NAMES),
        name="shapes",
        masks=masks,
    )


@register_dataset(name="shapes")
def load_shapes(
    split: str,
    *,
    root: str | None = None,
    download: bool = False,
    n_train: int = 10_000,
    n_test: int = 2_000,
    image_size: int = ShapesStyle.image_size,
    size_range: tuple[float, float] | list[float] = ShapesStyle.size_range,
    spurious_p: float = ShapesStyle.spurious_p,
    noise: float = ShapesStyle.noise,
    texture: float = ShapesStyle.texture,
    max_rotation: float = ShapesStyle.max_rotation,
    antialias: bool = ShapesStyle.antialias,
    render_seed: int = 0,
) -> ImageDataset:
    """The ``shapes`` dataset (``root`` and ``download`` are ignored: it is generated).

    ``size_range``: object diameter as a fraction of the image side; ``spurious_p``: probability
    that a *train* background has its class's hue (test backgrounds are always random);
    ``noise``: std of per-pixel Gaussian noise; ``render_seed``: base seed (train and test use
    different seeds derived from it).
    """
    for key, value, low in (
        ("n_train", n_train, 1),
        ("n_test", n_test, 1),
        ("image_size", image_size, 8),
    ):
        check(
            isinstance(value, int) and not isinstance(value, bool) and value >= low,
            f"shapes option {key} must be an integer >= {low}, got {value!r}",
        )
    check(
        len(size_range) == 2 and 0 < size_range[0] <= size_range[1] <= 1,
        f"shapes option size_range must be (low, high), 0 < low <= high <= 1; got {size_range!r}",
    )
    check(
        0.0 <= spurious_p <= 1.0, f"shapes option spurious_p must be in [0, 1], got {spurious_p!r}"
    )
    for key, value in (("noise", noise), ("texture", texture), ("max_rotation", max_rotation)):
        check(value >= 0.0, f"shapes option {key} must be >= 0, got {value!r}")
    style = ShapesStyle(
        image_size=image_size,
        size_range=(float(size_range[0]), float(size_range[1])),
        spurious_p=spurious_p if split == "train" else 0.0,  # test: correlation broken
        noise=noise,
        texture=texture,
        max_rotation=max_rotation,
        antialias=antialias,
    )
    dataset = generate_shapes(
        n_train if split == "train" else n_test,
        make_generator("shapes", int(render_seed), split),
        style,
    )
    dataset.meta.update(
        source="shapes",
        split=split,
        render_seed=render_seed,
        **asdict(style),  # spurious_p as applied to this split (0 for test)
    )
    return dataset
