"""``shapes``: the embedded, procedurally generated dataset (demo scale, CI, localization tests).

Ten classes of filled shapes (circle, square, triangle, cross, ring, star, diamond, hexagon,
L, T) at a random position, size, rotation and colour over a textured, noisy background.
Every sample comes with its ground-truth object mask, so CAM / localization metrics can be
checked against the truth.

Rendering is vectorised over the whole batch: each pixel (optionally 2×2 supersampled for
antialiasing) is mapped into the object's normalised frame (unit circumscribed disk) and tested
against the class's shape, written as a union of convex polygons (half-plane tests) or radius
tests. There is no per-image Python loop; the only loop is over the ten classes.

Geometry: the object's *size* is the diameter of its circumscribed disk as a fraction of the
image side, drawn uniformly from ``size_range``; the whole disk lies inside the image.

Spurious correlation (Waterbirds-style): with ``spurious_p > 0`` a train image's background hue
is its class's hue (``k / num_classes``) with probability ``spurious_p``; test backgrounds are
always random, so a model that learned the background colour fails on test.

Train and test are drawn with different seeds derived from one ``render_seed``, so they never
share images, and the same options give byte-identical data on every machine.
"""

from __future__ import annotations

import math

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
_CHUNK = 2048  # images rendered at once (bounds the memory of the per-pixel temporaries)


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


def _inside_convex(u: torch.Tensor, v: torch.Tensor, polygon: list[tuple[float, float]]):
    """Points (u, v) inside a convex polygon: on the inner side of every edge."""
    edges = list(zip(polygon, polygon[1:] + polygon[:1], strict=True))
    area2 = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in edges)
    if area2 < 0:  # make the vertex order counter-clockwise so "inside" is "left of each edge"
        edges = [(b, a) for a, b in reversed(edges)]
    inside = torch.ones_like(u, dtype=torch.bool)
    for (x0, y0), (x1, y1) in edges:
        inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
    return inside


def shape_inside(name: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Whether points (u, v) of the normalised object frame lie inside shape ``name``."""
    if name == "circle":
        return u * u + v * v <= 1.0
    if name == "ring":
        rho2 = u * u + v * v
        return (rho2 <= 1.0) & (rho2 >= RING_INNER_RADIUS**2)
    inside = torch.zeros_like(u, dtype=torch.bool)
    for polygon in _POLYGONS[name]:
        inside |= _inside_convex(u, v, polygon)
    return inside


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HSV in [0, 1] -> RGB in [0, 1], shape (..., 3)."""
    k = (torch.tensor([5.0, 3.0, 1.0]) + h.unsqueeze(-1) * 6.0) % 6.0
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return v.unsqueeze(-1) * (1.0 - s.unsqueeze(-1) * ramp)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _render_chunk(
    labels: torch.Tensor,
    image_size: int,
    size_range: tuple[float, float],
    class_hue: torch.Tensor | None,
    spurious_p: float,
    noise: float,
    antialias: bool,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render one chunk of images (uint8 N,3,S,S) and their object masks (bool N,S,S)."""
    n, side = labels.shape[0], image_size
    # ---- per-image parameters
    diameter = _uniform(n, *size_range, generator) * side
    radius = diameter / 2
    cx = radius + torch.rand(n, generator=generator) * (side - diameter)
    cy = radius + torch.rand(n, generator=generator) * (side - diameter)
    angle = torch.rand(n, generator=generator) * (2 * math.pi)
    bg_hue = torch.rand(n, generator=generator)
    if class_hue is not None:
        use_class = torch.rand(n, generator=generator) < spurious_p
        bg_hue = torch.where(use_class, class_hue[labels], bg_hue)
    fg_hue = (bg_hue + _uniform(n, 0.2, 0.8, generator)) % 1.0
    bg_rgb = hsv_to_rgb(
        bg_hue, _uniform(n, 0.25, 0.75, generator), _uniform(n, 0.3, 0.8, generator)
    )
    fg_rgb = hsv_to_rgb(fg_hue, _uniform(n, 0.4, 1.0, generator), _uniform(n, 0.35, 1.0, generator))

    # ---- coverage of each pixel by the object (mean over sub-pixel samples)
    sub = 2 if antialias else 1
    offsets = (torch.arange(sub, dtype=torch.float32) + 0.5) / sub
    coords = (torch.arange(side, dtype=torch.float32)[:, None] + offsets).reshape(-1)  # side*sub
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    dx = (xs.reshape(1, -1) - cx[:, None]) / radius[:, None]
    dy = (cy[:, None] - ys.reshape(1, -1)) / radius[:, None]  # v axis points up
    cos, sin = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    hit = torch.zeros_like(u, dtype=torch.bool)
    for k, name in enumerate(SHAPE_NAMES):
        rows = (labels == k).nonzero().squeeze(1)
        if rows.numel():
            hit[rows] = shape_inside(name, u[rows], v[rows])
    coverage = hit.float().reshape(n, side, sub, side, sub).mean(dim=(2, 4))  # (n, S, S)

    # ---- textured background: brightness modulated by two random gratings per image
    pix = torch.arange(side, dtype=torch.float32) + 0.5
    py, px = torch.meshgrid(pix, pix, indexing="ij")
    texture = torch.zeros(n, side, side)
    for _ in range(2):
        freq = _uniform(n, 1.0, 6.0, generator) * (2 * math.pi / side)
        theta = torch.rand(n, generator=generator) * math.pi
        phase = torch.rand(n, generator=generator) * (2 * math.pi)
        proj = torch.cos(theta)[:, None, None] * px + torch.sin(theta)[:, None, None] * py
        texture += 0.5 * torch.sin(freq[:, None, None] * proj + phase[:, None, None])
    amplitude = _uniform(n, 0.1, 0.35, generator)[:, None, None]
    background = bg_rgb[:, :, None, None] * (1 + amplitude * texture)[:, None]
    alpha = coverage[:, None]
    image = background * (1 - alpha) + fg_rgb[:, :, None, None] * alpha
    image += noise * torch.randn(image.shape, generator=generator)
    pixels = image.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return pixels, coverage >= 0.5


def generate_shapes(
    n: int,
    generator: torch.Generator,
    *,
    image_size: int = 32,
    size_range: tuple[float, float] = (0.25, 0.6),
    spurious_p: float = 0.0,
    noise: float = 0.05,
    antialias: bool = True,
) -> ImageDataset:
    """``n`` balanced samples (labels ``arange(n) % 10``, shuffled) drawn from ``generator``."""
    num_classes = len(SHAPE_NAMES)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
    class_hue = torch.arange(num_classes, dtype=torch.float32) / num_classes if spurious_p else None
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    masks = torch.empty(n, image_size, image_size, dtype=torch.bool)
    for start in range(0, n, _CHUNK):
        part = slice(start, start + _CHUNK)
        images[part], masks[part] = _render_chunk(
            labels[part], image_size, size_range, class_hue, spurious_p, noise, antialias, generator
        )
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
    image_size: int = 32,
    size_range: tuple[float, float] | list[float] = (0.25, 0.6),
    spurious_p: float = 0.0,
    noise: float = 0.05,
    antialias: bool = True,
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
    check(noise >= 0.0, f"shapes option noise must be >= 0, got {noise!r}")
    size_range = (float(size_range[0]), float(size_range[1]))
    dataset = generate_shapes(
        n_train if split == "train" else n_test,
        make_generator("shapes", int(render_seed), split),
        image_size=image_size,
        size_range=size_range,
        spurious_p=spurious_p if split == "train" else 0.0,
        noise=noise,
        antialias=antialias,
    )
    dataset.meta.update(
        source="shapes",
        split=split,
        render_seed=render_seed,
        image_size=image_size,
        size_range=list(size_range),
        spurious_p=spurious_p,
        noise=noise,
        antialias=antialias,
    )
    return dataset
