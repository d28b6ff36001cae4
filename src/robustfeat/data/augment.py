"""Image-level augmentation baselines as batched steps: Cutout, Random Erasing, AugMix.

Each is a step of ``data/transforms.py``: ``(x float (B, C, H, W) in [0, 1], generator) -> x``,
with per-image random parameters drawn from the generator. They are selected by name in the
training config (``augment: augmix``, ``augment_args: {...}``) and appended to the loader's
crop/flip pipeline, so any method and any adversarial-training scheme trains on augmented
images (TENET (Aug.) = ``--method tenet --set augment=augmix``). The loader's generator is
derived from (seed, epoch, batch), so runs stay reproducible and resumable; a method that
augments inside its step (AugMix's JSD loss, methods/augmix_jsd.py) uses
``generator_from_global_rng()`` (the trainer re-seeds the global RNG every step).

Why not torchvision/timm transforms called directly: torchvision's v2 transforms draw ONE set of
parameters per call (a whole batch gets the same erased rectangle / the same AugMix operations)
from the global RNG, so per-image parameters mean a Python loop over the batch; timm's
RandomErasing loops over images and draws from Python's ``random``. Measured on a 128-batch of
32x32 images (1 thread, shared machine): v2.AugMix image by image 400 ms, v2.RandomErasing image
by image 22 ms; the versions below take about 150 ms and 3 ms, i.e. 0.18x and 0.004x of a
ResNet-20 CE training step measured in the same process (benchmarks/step_time_tenet.py). So:

- Cutout (DeVries & Taylor 2017; no library implements it): a vectorised square mask;
- Random Erasing (Zhong et al. 2020): torchvision's parameter algorithm (10 attempts of a
  uniform area fraction and log-uniform aspect ratio, the first that fits) vectorised over the
  batch, then the same vectorised rectangle mask;
- AugMix (Hendrycks et al. 2020): torchvision's v2.AugMix operations, magnitude bins and
  sampling (op uniform, magnitude bin uniform below ``severity``, random sign, chain depth
  1-3, Dirichlet chain weights, Beta mixing weight), vectorised by applying each chain step to
  all images at once: the affine ops (shear, translate, rotate) as one batched ``grid_sample``
  with per-image matrices from torchvision's own ``_get_inverse_affine_matrix`` and its grid
  convention, the other ops by calling torchvision's op on the images that drew it (grouped by
  magnitude). Each op's result equals torchvision's on every image (tests). The mix is returned
  in float (the AugMix paper mixes float tensors; v2.AugMix truncates it back to uint8).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .._registry import Registry
from ..errors import ConfigError, check
from .transforms import Step

AUGMENTS: Registry = Registry("augmentation")
register_augment = AUGMENTS.register
Fill = float | Sequence[float] | str


def generator_from_global_rng() -> torch.Generator:
    """A CPU generator seeded from the global RNG (which the trainer re-seeds every step)."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))


def _fill_values(fill: Fill, mean: Sequence[float], channels: int) -> torch.Tensor:
    """(C,) fill colour: ``"mean"`` = the dataset mean (0 after the model's normalization)."""
    if fill == "mean":
        values = list(mean)
    elif isinstance(fill, (int, float)):
        values = [float(fill)] * channels
    elif isinstance(fill, Sequence) and not isinstance(fill, str):
        values = [float(v) for v in fill]
    else:
        raise ConfigError(f"fill must be 'mean', a number or one number per channel, got {fill!r}")
    check(len(values) == channels, f"fill needs {channels} values, got {values}")
    check(all(0.0 <= v <= 1.0 for v in values), f"fill values must be in [0, 1], got {values}")
    return torch.tensor(values)


def erase_rectangles(
    x: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    height: torch.Tensor,
    width: torch.Tensor,
    fill: torch.Tensor,
) -> torch.Tensor:
    """Set rows [top, top + height) x columns [left, left + width) of image i to ``fill`` (C,).

    All arguments but ``x`` and ``fill`` are (B,) integer tensors; a zero height erases nothing."""
    device = x.device
    rows = torch.arange(x.shape[2], device=device)
    cols = torch.arange(x.shape[3], device=device)
    top, left = top.to(device)[:, None], left.to(device)[:, None]
    in_rows = (rows >= top) & (rows < top + height.to(device)[:, None])
    in_cols = (cols >= left) & (cols < left + width.to(device)[:, None])
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
    return torch.where(mask, fill.to(device=device, dtype=x.dtype)[None, :, None, None], x)


class Cutout:
    """Cutout (DeVries & Taylor 2017): a ``size`` x ``size`` square at a uniformly random centre,
    clipped at the border, filled with ``fill`` (default the dataset mean: the reference code
    zeroes the normalized image); applied to each image with probability ``p``."""

    def __init__(
        self,
        size: int = 16,
        p: float = 1.0,
        fill: Fill = "mean",
        mean: Sequence[float] = (0.0,) * 3,
    ) -> None:
        check(
            isinstance(size, int) and size >= 1,
            f"cutout size must be an integer >= 1, got {size!r}",
        )
        check(0.0 <= p <= 1.0, f"cutout p must be in [0, 1], got {p}")
        self.size, self.p, self.fill, self.mean = size, p, fill, tuple(mean)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, channels, height, width = x.shape
        cy = torch.randint(0, height, (batch,), generator=generator)
        cx = torch.randint(0, width, (batch,), generator=generator)
        apply = torch.rand(batch, generator=generator) < self.p
        half = self.size // 2
        top, bottom = (cy - half).clamp(0, height), (cy + half).clamp(0, height)
        left, right = (cx - half).clamp(0, width), (cx + half).clamp(0, width)
        fill = _fill_values(self.fill, self.mean, channels)
        return erase_rectangles(x, top, left, (bottom - top) * apply, right - left, fill)

    def __repr__(self) -> str:
        return f"Cutout(size={self.size}, p={self.p}, fill={self.fill!r})"


class RandomErasing:
    """Random Erasing (Zhong et al. 2020) with torchvision's parameter algorithm, per image.

    With probability ``p``: up to 10 attempts of an area fraction uniform in ``scale`` and an
    aspect ratio log-uniform in ``ratio``; h = round(sqrt(area · r)), w = round(sqrt(area / r));
    the first attempt with h < H and w < W is erased at a uniform position (none fits: the image
    is kept). ``fill``: "mean" (Zhong et al.'s CIFAR setting), "random" (per-pixel uniform
    noise) or a colour. Defaults: the paper's p=0.5, s_l=0.02, s_h=0.4, r_1=0.3.
    """

    attempts = 10

    def __init__(
        self,
        p: float = 0.5,
        scale: Sequence[float] = (0.02, 0.4),
        ratio: Sequence[float] = (0.3, 1 / 0.3),
        fill: Fill = "mean",
        mean: Sequence[float] = (0.0,) * 3,
    ) -> None:
        check(0.0 <= p <= 1.0, f"random erasing p must be in [0, 1], got {p}")
        check(
            len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1,
            f"scale must be (low, high) with 0 < low <= high <= 1, got {scale}",
        )
        check(
            len(ratio) == 2 and 0 < ratio[0] <= ratio[1],
            f"ratio must be (low, high) with 0 < low <= high, got {ratio}",
        )
        self.p, self.scale, self.ratio = p, tuple(scale), tuple(ratio)
        self.fill, self.mean = fill, tuple(mean)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, channels, height, width = x.shape
        shape = (batch, self.attempts)
        area = (
            height
            * width
            * (
                self.scale[0]
                + (self.scale[1] - self.scale[0]) * torch.rand(shape, generator=generator)
            )
        )
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(shape, generator=generator))
        h = torch.sqrt(area * aspect).round().long()
        w = torch.sqrt(area / aspect).round().long()
        fits = (h < height) & (w < width)
        first = fits.to(torch.uint8).argmax(dim=1)  # first attempt that fits
        apply = (torch.rand(batch, generator=generator) < self.p) & fits.any(dim=1)
        h = h.gather(1, first[:, None]).squeeze(1) * apply
        w = w.gather(1, first[:, None]).squeeze(1)
        top = (torch.rand(batch, generator=generator) * (height - h + 1)).long()
        left = (torch.rand(batch, generator=generator) * (width - w + 1)).long()
        if self.fill == "random":
            noise = torch.rand(x.shape, generator=generator).to(x.device, x.dtype)
            erased = erase_rectangles(torch.zeros_like(x), top, left, h, w, torch.ones(channels))
            return torch.where(erased > 0, noise, x)
        return erase_rectangles(x, top, left, h, w, _fill_values(self.fill, self.mean, channels))

    def __repr__(self) -> str:
        return (
            f"RandomErasing(p={self.p}, scale={self.scale}, ratio={self.ratio}, fill={self.fill!r})"
        )


# ----------------------------------------------------------------------------- AugMix
# How torchvision's AugMix calls the affine ops (v2 ``_apply_image_or_video_transform``):
# op -> (centre at the top-left corner (center=[0, 0]) rather than the image centre,
#        magnitude -> (angle, translate, shear) of F.affine; F.rotate as the same affine map).
AFFINE_OPS: dict[str, tuple[bool, Callable[[float], tuple[float, list[float], list[float]]]]] = {
    "ShearX": (True, lambda m: (0.0, [0.0, 0.0], [math.degrees(math.atan(m)), 0.0])),
    "ShearY": (True, lambda m: (0.0, [0.0, 0.0], [0.0, math.degrees(math.atan(m))])),
    "TranslateX": (False, lambda m: (0.0, [float(int(m)), 0.0], [0.0, 0.0])),
    "TranslateY": (False, lambda m: (0.0, [0.0, float(int(m))], [0.0, 0.0])),
    # F.rotate(angle) is an affine map with angle -(angle % 360) about the centre
    "Rotate": (False, lambda m: (-(m % 360), [0.0, 0.0], [0.0, 0.0])),
}


def affine_warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp uint8 images (N, C, H, W) by per-image inverse affine matrices theta (N, 2, 3) in
    pixel units about the image centre (torchvision's convention): bilinear, zeros outside,
    rounded back to uint8 — torchvision's tensor affine kernel, batched over matrices."""
    n, _, height, width = images.shape
    device = images.device
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, device=device)
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height, device=device)
    base = torch.stack(
        [xs.expand(height, width), ys[:, None].expand(height, width), xs.new_ones(height, width)],
        dim=-1,
    ).view(1, height * width, 3)
    scale = torch.tensor([0.5 * width, 0.5 * height], device=device)
    grid = base.expand(n, -1, -1).bmm(theta.to(device).transpose(1, 2) / scale)
    out = F.grid_sample(
        images.float(),
        grid.view(n, height, width, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )
    return out.round_().to(images.dtype)


class AugMix:
    """AugMix (Hendrycks et al. 2020), batched, with torchvision v2.AugMix's operations.

    ``severity`` 3, ``width`` 3 chains, ``depth`` -1 (1-3 ops per chain), ``alpha`` 1 as in the
    paper; ``all_ops=False`` leaves out brightness/colour/contrast/sharpness, which overlap with
    the CIFAR-10-C corruptions (the paper's choice). Returns (1 - m)·x + m·Σ_i w_i·chain_i(x)
    for a fraction ``p`` of the images (the rest unchanged): p=1 is the AugMix paper; the official
    TENET (Aug.) code trains on the AugMix copy and the clean copy of every image (p=0.5 in
    expectation).
    """

    def __init__(
        self,
        severity: int = 3,
        width: int = 3,
        depth: int = -1,
        alpha: float = 1.0,
        all_ops: bool = False,
        p: float = 1.0,
        mean: Sequence[float] = (0.0,) * 3,  # AugMix has no fill colour
    ) -> None:
        check(isinstance(width, int) and width >= 1, f"augmix width must be >= 1, got {width!r}")
        check(0.0 <= p <= 1.0, f"augmix p must be in [0, 1], got {p}")
        check(
            isinstance(depth, int) and (depth == -1 or 1 <= depth <= 10),
            f"augmix depth must be -1 (random 1-3) or 1..10, got {depth!r}",
        )
        check(alpha > 0, f"augmix alpha must be > 0, got {alpha}")
        from torchvision.transforms import v2  # on use: torchvision's import costs about torch's

        try:
            self.reference = v2.AugMix(severity, width, depth, alpha, all_ops)
        except ValueError as err:
            raise ConfigError(f"bad AugMix option: {err}") from err
        self.severity, self.width, self.depth, self.alpha = severity, width, depth, alpha
        self.all_ops, self.p = all_ops, p
        ref = self.reference
        self.space = ref._AUGMENTATION_SPACE if all_ops else ref._PARTIAL_AUGMENTATION_SPACE
        self.ops = list(self.space)
        self.is_affine = torch.tensor([op in AFFINE_OPS for op in self.ops])
        self._tables: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def magnitude(self, op: str, level: int, negative: bool, height: int, width: int) -> float:
        """torchvision's magnitude of ``op`` at bin ``level`` (negated for signed ops)."""
        magnitudes_fn, signed = self.space[op]
        magnitudes = magnitudes_fn(self.reference._PARAMETER_MAX, height, width)
        if magnitudes is None:
            return 0.0
        value = float(magnitudes[level])
        return -value if signed and negative else value

    def tables(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Magnitudes (ops, severity, 2) and, for the affine ops, inverse matrices
        (ops, severity, 2, 2, 3), indexed by (op, bin, negative); cached per image size."""
        from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix

        if (height, width) not in self._tables:
            shape = (len(self.ops), self.severity, 2)
            mags = torch.zeros(shape, dtype=torch.float64)
            theta = torch.zeros(*shape, 6)
            for o, op in enumerate(self.ops):
                for level in range(self.severity):
                    for negative in (0, 1):
                        m = self.magnitude(op, level, bool(negative), height, width)
                        mags[o, level, negative] = m
                        if op in AFFINE_OPS:
                            top_left, params = AFFINE_OPS[op]
                            angle, translate, shear = params(m)
                            center = [-0.5 * width, -0.5 * height] if top_left else [0.0, 0.0]
                            matrix = _get_inverse_affine_matrix(
                                center, angle, translate, 1.0, shear
                            )
                            theta[o, level, negative] = torch.tensor(matrix)
            self._tables[height, width] = (mags, theta.view(*shape, 2, 3))
        return self._tables[height, width]

    def apply_ops(
        self, images: torch.Tensor, op: torch.Tensor, level: torch.Tensor, negative: torch.Tensor
    ) -> torch.Tensor:
        """One chain step: image i gets ``self.ops[op[i]]`` at bin ``level[i]`` (uint8 images)."""
        mags, theta = self.tables(*images.shape[-2:])
        sign = negative.long()
        out = images.clone()
        affine = self.is_affine[op]
        if affine.any():
            rows = affine.nonzero().squeeze(1)
            matrices = theta[op[rows], level[rows], sign[rows]]
            out[rows.to(images.device)] = affine_warp(images[rows.to(images.device)], matrices)
        magnitude = mags[op, level, sign]
        for index in op[~affine].unique().tolist():
            for value in magnitude[(op == index)].unique().tolist():
                rows = ((op == index) & (magnitude == value)).nonzero().squeeze(1).to(images.device)
                out[rows] = self.reference._apply_image_or_video_transform(
                    images[rows],
                    self.ops[index],
                    value,
                    interpolation=self.reference.interpolation,
                    fill=self.reference._fill,
                )
        return out

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.p < 1.0:
            chosen = (torch.rand(x.shape[0], generator=generator) < self.p).nonzero().squeeze(1)
            rows = chosen.to(x.device)
            out = x.clone()
            if len(rows):
                out[rows] = self.augment_and_mix(x[rows], generator)
            return out
        return self.augment_and_mix(x, generator)

    def augment_and_mix(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """AugMix of every image of x."""
        batch = x.shape[0]
        images = (x * 255).round().clamp(0, 255).to(torch.uint8)
        sample = torch._sample_dirichlet  # torchvision's Beta/Dirichlet sampler, with a generator
        m = sample(torch.full((batch, 2), float(self.alpha)), generator=generator)[:, 1]
        weights = sample(torch.full((batch, self.width), float(self.alpha)), generator=generator)
        mix = torch.zeros_like(x)
        for chain in range(self.width):
            if self.depth > 0:
                depth = torch.full((batch,), self.depth)
            else:
                depth = torch.randint(1, 4, (batch,), generator=generator)
            aug = images
            for step in range(int(depth.max())):
                op = torch.randint(len(self.ops), (batch,), generator=generator)
                level = torch.randint(self.severity, (batch,), generator=generator)
                negative = torch.rand(batch, generator=generator) <= 0.5
                live = (depth > step).nonzero().squeeze(1)
                if live.numel() == batch:
                    aug = self.apply_ops(aug, op, level, negative)
                else:
                    aug = aug.clone()
                    rows = live.to(x.device)
                    aug[rows] = self.apply_ops(aug[rows], op[live], level[live], negative[live])
            mix += weights[:, chain].to(x)[:, None, None, None] * aug.to(x.dtype) / 255
        m = m.to(x)[:, None, None, None]
        return (1 - m) * x + m * mix

    def __repr__(self) -> str:
        return (
            f"AugMix(severity={self.severity}, width={self.width}, depth={self.depth}, "
            f"alpha={self.alpha}, all_ops={self.all_ops}, p={self.p})"
        )


register_augment(Cutout, name="cutout")
register_augment(RandomErasing, name="random_erasing")
register_augment(AugMix, name="augmix")


def create_augment(name: str, mean: Sequence[float] = (0.0,) * 3, **options: Any) -> Step:
    """The registered augmentation ``name`` (cutout, random_erasing, augmix) with ``options``;
    ``mean`` is the dataset mean (the "mean" fill colour)."""
    cls = AUGMENTS.get(name)
    try:
        return cls(mean=mean, **options)
    except TypeError as err:
        raise ConfigError(f"bad options for augmentation {name!r}: {err}") from err


def list_augments() -> list[str]:
    return AUGMENTS.names()
