"""Batched tensor augmentation: the whole batch at once, randomness from an explicit generator.

torchvision's v2 transforms draw one set of random parameters per call (per image when used in a
Dataset, or one for the whole batch when called on a batch), and use the global RNG; training here
needs per-image parameters for a batch already on the device, drawn from a ``torch.Generator``
so that a resumed run reproduces every batch. Hence these small functions.

Every step is a callable ``(x, generator) -> x`` on float images (B, C, H, W) in [0, 1];
parameters are drawn on the CPU generator and moved to ``x.device`` (results do not depend on
the device). ``Augment(step, step, ...)`` composes steps; new batched steps (Cutout, Random
Erasing, AugMix ...) only need the same call signature. Normalization is the model's job.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError

PADDING_MODES = ("reflect", "constant", "replicate")
Step = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def crop_at(
    x: torch.Tensor,
    padding: int,
    top: torch.Tensor,
    left: torch.Tensor,
    mode: str = "reflect",
    fill: float = 0.0,
) -> torch.Tensor:
    """Pad the batch by ``padding`` on every side and cut image i at (top[i], left[i]).

    Offsets are in the padded frame, 0 .. 2·padding; the output has the input's size.
    """
    if mode not in PADDING_MODES:
        raise ConfigError(f"padding mode must be one of {', '.join(PADDING_MODES)}, got {mode!r}")
    if padding == 0:
        return x
    batch, channels, height, width = x.shape
    if mode == "reflect" and padding >= min(height, width):
        raise ConfigError(
            f"reflect padding {padding} needs images larger than {padding} pixels, got "
            f"{height}x{width}; lower crop_padding or use padding_mode constant or replicate"
        )
    padded = F.pad(x, (padding,) * 4, mode=mode, value=fill if mode == "constant" else None)
    rows = top.to(x.device)[:, None] + torch.arange(height, device=x.device)
    cols = left.to(x.device)[:, None] + torch.arange(width, device=x.device)
    out = padded.gather(2, rows[:, None, :, None].expand(batch, channels, height, padded.shape[3]))
    return out.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))


def random_crop(
    x: torch.Tensor,
    generator: torch.Generator,
    padding: int = 4,
    mode: str = "reflect",
    fill: float = 0.0,
) -> torch.Tensor:
    """Random crop with padding (Krizhevsky-style CIFAR augmentation), one offset per image."""
    top = torch.randint(0, 2 * padding + 1, (x.shape[0],), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (x.shape[0],), generator=generator)
    return crop_at(x, padding, top, left, mode, fill)


def flip_where(x: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """Mirror (left-right) the images whose flag is True."""
    return torch.where(flags.to(x.device)[:, None, None, None], x.flip(3), x)


def random_hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Horizontal flip of each image with probability ``p``."""
    return flip_where(x, torch.rand(x.shape[0], generator=generator) < p)


class RandomCrop:
    """Step: ``random_crop`` with fixed padding / mode."""

    def __init__(self, padding: int = 4, mode: str = "reflect", fill: float = 0.0) -> None:
        if not isinstance(padding, int) or padding < 0:
            raise ConfigError(f"crop padding must be an integer >= 0, got {padding!r}")
        if mode not in PADDING_MODES:
            raise ConfigError(
                f"padding mode must be one of {', '.join(PADDING_MODES)}, got {mode!r}"
            )
        self.padding, self.mode, self.fill = padding, mode, fill

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_crop(x, generator, self.padding, self.mode, self.fill)

    def __repr__(self) -> str:
        return f"RandomCrop(padding={self.padding}, mode={self.mode!r})"


class RandomHorizontalFlip:
    """Step: ``random_hflip`` with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"flip probability must be in [0, 1], got {p!r}")
        self.p = p

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_hflip(x, generator, self.p)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Augment:
    """Steps applied in order, all drawing from the one generator passed to the call."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for step in self.steps:
            x = step(x, generator)
        return x

    def __repr__(self) -> str:
        return f"Augment({', '.join(map(repr, self.steps))})"


def default_train_augment(
    crop_padding: int = 4, padding_mode: str = "reflect", flip: bool = True
) -> Augment:
    """The CIFAR recipe (pad-and-crop, then horizontal flip); fields of ``TrainConfig``."""
    steps: list[Step] = []
    if crop_padding:
        steps.append(RandomCrop(crop_padding, padding_mode))
    if flip:
        steps.append(RandomHorizontalFlip())
    return Augment(*steps)
