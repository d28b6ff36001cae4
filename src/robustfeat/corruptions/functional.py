"""The 15 CIFAR-10-C corruptions at 5 severities, vectorised over a batch of images.

Our own implementation with the CIFAR constants of Hendrycks & Dietterich's ``make_cifar_c.py``
(ICLR 2019; the constants, the order of operations and the 0-255 rounding follow that script).
Every function takes a float64 array ``x`` of shape (N, H, W, C) in [0, 1], a severity in 1..5
and a ``numpy.random.Generator``, and returns values on the 0-255 scale; the caller truncates to
uint8 as the script does (``np.uint8(...)``). All randomness comes from the generator, so a
(seed, corruption, severity) triple gives the same images on every machine.

Deviations from the script, all to avoid its ImageMagick (Wand), OpenCV and scikit-image
dependencies, and all documented where they happen:

- ``motion_blur`` / the streaks of ``snow``: ImageMagick's ``MotionBlurImage`` re-implemented
  (a one-sided Gaussian kernel of width 2*ceil(radius)+1 along the blur angle, integer offsets
  ``ceil(i*cos - 0.5)``, ``ceil(i*sin - 0.5)``, edge pixels repeated), not called.
- ``frost``: the script's frost photographs (frost1-5, as shipped in the Apache-2.0
  ``imagecorruptions`` package) are vendored already resized by 0.2 (the script's
  ``cv2.resize(..., fx=0.2, fy=0.2)``), see ``frost/NOTICE``.
- ``impulse_noise`` re-implements scikit-image's ``random_noise(mode="s&p")``; ``gaussian``
  blurs use scipy's ``gaussian_filter`` with scikit-image's defaults (mode "nearest",
  truncate 4); ``defocus_blur``'s disk kernel and OpenCV's reflect-101 filtering and
  ``elastic_transform``'s ``warpAffine`` are written with numpy / scipy / torch equivalents.
- images of other sizes than 32x32 use the same (CIFAR) constants, scaled where the script
  writes them in terms of the image size (elastic), with a plasma map of the next power of two.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
FROST_DIR = Path(__file__).parent / "frost"


def _pick(values: list, severity: int):
    return values[severity - 1]


# ------------------------------------------------------------------ noise
def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = _pick([0.04, 0.06, 0.08, 0.09, 0.10], severity)
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = _pick([500, 250, 100, 75, 50], severity)
    return np.clip(rng.poisson(x * c) / c, 0, 1) * 255


def impulse_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper on individual values (scikit-image's ``random_noise(mode="s&p")``)."""
    c = _pick([0.01, 0.02, 0.03, 0.05, 0.07], severity)
    out = x.copy()
    flipped = rng.random(x.shape) <= c
    salted = rng.random(x.shape) <= 0.5
    out[flipped & salted] = 1.0
    out[flipped & ~salted] = 0.0
    return np.clip(out, 0, 1) * 255


# ------------------------------------------------------------------ blur helpers
def _gaussian(
    x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0
) -> np.ndarray:
    """scikit-image's ``gaussian(..., multichannel=True)``: blur H and W of each image / channel."""
    if sigma <= 0:
        return x.copy()
    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode=mode, truncate=truncate)


def _gaussian_kernel_1d(size: int, sigma: float) -> np.ndarray:
    """OpenCV's ``getGaussianKernel(size, sigma)``."""
    i = np.arange(size) - (size - 1) / 2
    k = np.exp(-(i**2) / (2 * sigma**2))
    return k / k.sum()


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The script's ``disk``: an aliased disk (17x17 for radius <= 8), normalised, then blurred
    with a 3x3 Gaussian of sigma ``alias_blur`` (a 5x5 one beyond radius 8)."""
    half, ksize = (8, 3) if radius <= 8 else (math.ceil(radius), 5)
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    g = _gaussian_kernel_1d(ksize, alias_blur)
    # separable Gaussian blur of the kernel image with reflect-101 borders (OpenCV's default)
    disk = ndimage.correlate1d(disk, g, axis=0, mode="mirror")
    return ndimage.correlate1d(disk, g, axis=1, mode="mirror")


def _filter2d_reflect101(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """OpenCV's ``filter2D`` per channel (correlation, reflect-101 borders), batched with torch
    in float32 (as OpenCV filters the script's float32 kernel)."""
    n, h, w, c = x.shape
    pad = kernel.shape[0] // 2
    if pad >= min(h, w):  # torch's reflect padding needs pad < size: scipy's "mirror" is the same
        return ndimage.correlate(x, kernel[None, :, :, None], mode="mirror")
    t = torch.from_numpy(x.astype(np.float32)).permute(0, 3, 1, 2).reshape(n * c, 1, h, w)
    t = F.pad(t, (pad, pad, pad, pad), mode="reflect")
    out = F.conv2d(t, torch.from_numpy(kernel.astype(np.float32))[None, None])
    return out.reshape(n, c, h, w).permute(0, 2, 3, 1).double().numpy()


def motion_blur_kernel(radius: float, sigma: float) -> np.ndarray:
    """ImageMagick ``MotionBlurImage`` weights: exp(-i^2 / (2 sigma^2)), i = 0..2*ceil(radius)."""
    width = 2 * math.ceil(radius) + 1
    i = np.arange(width)
    k = np.exp(-(i**2) / (2 * sigma**2))
    return k / k.sum()


def _motion_blur(x: np.ndarray, radius: float, sigma: float, angles_deg: np.ndarray) -> np.ndarray:
    """Re-implementation of ImageMagick's ``MotionBlurImage`` (one angle per image): the output
    pixel is the kernel-weighted sum of pixels at integer offsets along the angle; pixels
    beyond the border repeat the edge (ImageMagick's default virtual-pixel method)."""
    n, h, w, _ = x.shape
    kernel = motion_blur_kernel(radius, sigma)
    theta = np.deg2rad(angles_deg)[:, None]
    steps = np.arange(len(kernel))[None, :]
    off_x = np.ceil(steps * np.cos(theta) - 0.5).astype(np.int64)  # (N, width)
    off_y = np.ceil(steps * np.sin(theta) - 0.5).astype(np.int64)
    rows0, cols0 = np.arange(h), np.arange(w)
    batch = np.arange(n)[:, None, None]
    out = np.zeros_like(x)
    for i, weight in enumerate(kernel):
        rows = np.clip(rows0[None, :] + off_y[:, i : i + 1], 0, h - 1)  # (N, H)
        cols = np.clip(cols0[None, :] + off_x[:, i : i + 1], 0, w - 1)  # (N, W)
        out += weight * x[batch, rows[:, :, None], cols[:, None, :]]
    return out


def clipped_zoom(x: np.ndarray, zoom: float) -> np.ndarray:
    """Zoom the centre of each image by ``zoom`` and crop back to H x W: the script's
    ``scipy.ndimage.zoom(order=1)`` (corner-aligned bilinear to round(crop * zoom) pixels),
    computed as torch's bilinear ``interpolate(align_corners=True)`` -- the same formula."""
    h = x.shape[1]
    crop = int(np.ceil(h / zoom))
    top = (h - crop) // 2
    size = round(crop * zoom)
    part = torch.from_numpy(np.ascontiguousarray(x[:, top : top + crop, top : top + crop])).permute(
        0, 3, 1, 2
    )
    out = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=True)
    out = out.permute(0, 2, 3, 1).numpy()
    trim = (size - h) // 2
    return out[:, trim : trim + h, trim : trim + h]


# ------------------------------------------------------------------ blur
def defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, alias = _pick([(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)], severity)
    return np.clip(_filter2d_reflect101(x, disk_kernel(radius, alias)), 0, 1) * 255


def glass_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blur, locally shuffle pixels, blur.

    The script's shuffle scans pixels from the bottom-right and "swaps" each with a random
    neighbour at offset (dy, dx) in {-delta..delta-1}^2 through a tuple assignment of numpy
    views, ``x[h, w], x[h', w'] = x[h', w'], x[h, w]``, which copies the neighbour into the pixel
    and leaves the neighbour as it was (both sides are views). The released CIFAR-10-C was made
    by that code, so we reproduce its effective operation. Because every neighbour lies up / left
    of the pixel, i.e. later in the scan, it is still unmodified when read, and one iteration is
    a single vectorised gather: new[h, w] = old[h + dy, w + dx].
    """
    sigma, delta, iterations = _pick(
        [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)], severity
    )
    n, h, w, _ = x.shape
    img = np.floor(_gaussian(x, sigma) * 255).astype(np.uint8)  # the script's np.uint8(... * 255)
    rows = np.arange(h - delta, delta, -1)  # scan order, as the script draws its offsets
    cols = np.arange(w - delta, delta, -1)
    batch = np.arange(n)[:, None, None]
    for _ in range(iterations):
        offsets = rng.integers(
            -delta, delta, size=(n, len(rows), len(cols), 2)
        )  # (dx, dy) per pixel
        src_rows = rows[None, :, None] + offsets[..., 1]
        src_cols = cols[None, None, :] + offsets[..., 0]
        img[batch, rows[None, :, None], cols[None, None, :]] = img[batch, src_rows, src_cols]
    return np.clip(_gaussian(img / 255.0, sigma), 0, 1) * 255


def motion_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = _pick([(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)], severity)
    angles = rng.uniform(-45, 45, size=x.shape[0])
    blurred = _motion_blur(
        np.floor(x * 255 + 0.5), radius, sigma, angles
    )  # ImageMagick works on 0-255
    return np.clip(np.floor(blurred + 0.5), 0, 255)


def zoom_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    ends = _pick([1.06, 1.11, 1.16, 1.21, 1.26], severity)
    zooms = np.arange(1, ends, 0.01)  # as the script: np.arange(1, 1.06, 0.01) etc.
    x = x.astype(np.float32)
    out = np.zeros_like(x)
    for zoom in zooms:
        out += clipped_zoom(x, zoom)
    return np.clip((x + out) / (len(zooms) + 1), 0, 1) * 255


# ------------------------------------------------------------------ weather
def plasma_fractal(
    n: int, mapsize: int, wibbledecay: float, rng: np.random.Generator
) -> np.ndarray:
    """Diamond-square height maps in [0, 1], (n, mapsize, mapsize), one per image; the script's
    algorithm (including its ``wibble * uniform(-wibble, wibble)`` noise scale)."""
    if mapsize & (mapsize - 1):
        raise ValueError(f"mapsize must be a power of two, got {mapsize}")
    maps = np.zeros((n, mapsize, mapsize))
    step, wibble = mapsize, 100.0

    def wibbled_mean(a: np.ndarray) -> np.ndarray:
        return a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)

    while step >= 2:
        half = step // 2
        corners = maps[:, 0:mapsize:step, 0:mapsize:step]
        square = corners + np.roll(corners, -1, axis=1)
        square = square + np.roll(square, -1, axis=2)
        maps[:, half:mapsize:step, half:mapsize:step] = wibbled_mean(square)
        centres = maps[:, half:mapsize:step, half:mapsize:step]
        corners = maps[:, 0:mapsize:step, 0:mapsize:step]
        left = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        maps[:, 0:mapsize:step, half:mapsize:step] = wibbled_mean(left)
        top = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        maps[:, half:mapsize:step, 0:mapsize:step] = wibbled_mean(top)
        step //= 2
        wibble /= wibbledecay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def fog(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    strength, decay = _pick([(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)], severity)
    n, h, w, _ = x.shape
    mapsize = 1 << (max(h, w) - 1).bit_length()  # the script's 32 for CIFAR
    max_val = x.max(axis=(1, 2, 3), keepdims=True)
    fogged = x + strength * plasma_fractal(n, mapsize, decay, rng)[:, :h, :w, None]
    return np.clip(fogged * max_val / (max_val + strength), 0, 1) * 255


@lru_cache(maxsize=1)
def frost_images() -> tuple[np.ndarray, ...]:
    """The five frost textures (RGB uint8, already resized by 0.2 as the script does)."""
    return tuple(
        np.asarray(Image.open(FROST_DIR / f"frost{i}.png").convert("RGB")) for i in range(1, 6)
    )


def frost(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    weight, frost_weight = _pick(
        [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)], severity
    )
    n, h, w, _ = x.shape
    textures = frost_images()
    if min(min(t.shape[:2]) for t in textures) <= max(h, w):
        raise ValueError(f"frost textures are too small for {h}x{w} images (CIFAR constants)")
    layer = np.empty((n, h, w, 3))
    for i in range(n):  # one texture and crop per image, drawn in the script's order
        tex = textures[rng.integers(5)]
        top, left = rng.integers(0, tex.shape[0] - h), rng.integers(0, tex.shape[1] - w)
        layer[i] = tex[top : top + h, left : left + w]
    return np.clip(weight * np.floor(x * 255 + 0.5) + frost_weight * layer, 0, 255)


def _gray(x: np.ndarray) -> np.ndarray:
    """OpenCV's RGB2GRAY weights."""
    return x @ np.array([0.299, 0.587, 0.114])


def snow(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    loc, scale, zoom, threshold, radius, sigma, blend = _pick(
        [
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ],
        severity,
    )
    n, h, w, _ = x.shape
    x = x.astype(np.float32)
    layer = rng.normal(size=(n, h, w), loc=loc, scale=scale)
    layer = clipped_zoom(layer[..., None], zoom)
    layer[layer < threshold] = 0
    layer = np.floor(np.clip(layer, 0, 1) * 255)  # the script's uint8 PNG of the snow layer
    layer = np.floor(_motion_blur(layer, radius, sigma, rng.uniform(-135, -45, size=n)) + 0.5) / 255
    x = blend * x + (1 - blend) * np.maximum(x, _gray(x)[..., None] * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2, axes=(1, 2)), 0, 1) * 255


# ------------------------------------------------------------------ digital
def brightness(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """HSV value + c: with hue and saturation fixed, RGB scales by V'/V (black becomes grey V')."""
    c = _pick([0.05, 0.1, 0.15, 0.2, 0.3], severity)
    value = x.max(axis=3, keepdims=True)
    new = np.clip(value + c, 0, 1)
    scaled = np.where(value > 0, x * new / np.where(value > 0, value, 1), new)
    return np.clip(scaled, 0, 1) * 255


def contrast(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = _pick([0.75, 0.5, 0.4, 0.3, 0.15], severity)
    means = x.mean(axis=(1, 2), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def _affine_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix mapping three (x, y) points ``src`` onto ``dst``
    (OpenCV's getAffineTransform)."""
    a = np.concatenate([src, np.ones((3, 1))], axis=1)
    return np.linalg.solve(a, dst).T


def elastic_transform(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    n, h, w, c = x.shape
    size = h  # the script's IMSIZE
    alpha, sigma, affine = (
        size * f
        for f in _pick(
            [
                (0, 0, 0.08),
                (0.05, 0.2, 0.07),
                (0.08, 0.06, 0.06),
                (0.1, 0.04, 0.05),
                (0.1, 0.03, 0.03),
            ],
            severity,
        )
    )
    x = x.astype(np.float32)
    centre = np.float32([h, w]) // 2
    square = min(h, w) // 3
    src = np.float32([centre + square, [centre[0] + square, centre[1] - square], centre - square])
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.empty_like(x)
    for i in range(n):
        dst = src + rng.uniform(-affine, affine, size=src.shape).astype(np.float32)
        m = _affine_from_points(src.astype(np.float64), dst.astype(np.float64))
        inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
        # warpAffine: dst(x, y) = src(M^-1 (x, y)), bilinear, reflect-101 borders ("mirror")
        sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
        sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
        warped = np.stack(
            [
                ndimage.map_coordinates(x[i, :, :, ch], [sy, sx], order=1, mode="mirror")
                for ch in range(c)
            ],
            axis=-1,
        )
        dx = (
            ndimage.gaussian_filter(
                rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3
            )
            * alpha
        )
        dy = (
            ndimage.gaussian_filter(
                rng.uniform(-1, 1, size=(h, w)), sigma, mode="reflect", truncate=3
            )
            * alpha
        )
        out[i] = np.stack(
            [
                ndimage.map_coordinates(
                    warped[:, :, ch], [yy + dy, xx + dx], order=1, mode="reflect"
                )
                for ch in range(c)
            ],
            axis=-1,
        )
    return np.clip(out, 0, 1) * 255


def _per_image_pil(x: np.ndarray, fn: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    images = np.floor(x * 255 + 0.5).astype(np.uint8)  # the script hands PIL images to these
    return np.stack([np.asarray(fn(Image.fromarray(img)), dtype=np.float64) for img in images])


def pixelate(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = _pick([0.95, 0.9, 0.85, 0.75, 0.65], severity)
    h, w = x.shape[1:3]
    return _per_image_pil(
        x, lambda im: im.resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX)
    )


def jpeg_compression(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    quality = _pick([80, 65, 58, 50, 40], severity)

    def roundtrip(im: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        im.save(buffer, "JPEG", quality=quality)
        return Image.open(buffer).convert("RGB")

    return _per_image_pil(x, roundtrip)


# the 15 benchmark corruptions, in the CIFAR-10-C / AugMix table order
CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}
SEVERITIES = (1, 2, 3, 4, 5)
