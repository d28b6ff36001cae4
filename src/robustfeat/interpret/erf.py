"""Effective receptive field (Luo et al. 2016) and the ERF distance of Top-GAP (Def. 3.1, Def. 4.1).

ERF of output position (i, j): the gradient of the output map at (i, j), summed over its
channels (Def. 3.1: sum_k dX^(n)_{i,j,k} / dX^(1)), with respect to the input image.
ERF(i, j) (Def. 4.1) is the mean absolute value of that gradient over the input pixels, and the
ERF distance is ERF(center) - ERF(corner), center = (h // 2, w // 2), corner = (0, 0) of the
h x w output map.

Normalisation. The paper's appendix B.1 says the gradients "were z-normalized to have mean at 0
and standard deviation at 1", and every value it reports (Tables A1, A2, A7) lies in [0, 0.6].
Our reading: each image's gradient (all colour channels and pixels) is z-normalised on its own
before the mean absolute value is taken. That bounds the value by 1 (E|z| <= sqrt(E z^2) = 1),
consistent with the tables, and makes it scale-free: it then measures how *spread* the gradient
is (a gradient concentrated on few pixels has a small mean |z|; a single spike on N pixels gives
about 2 / sqrt(N)), not how large. ``normalize="none"`` gives the raw mean |gradient| instead.

Output map: the Top-GAP network's class maps X^(n+1) (its ``class_maps``); for a plain backbone
the last stage's features X^(n) (Def. 3.1), or its CAM with ``output="cam"``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError, check
from ..models.base import StagedModel
from ..runtime import model_mode
from .cam import class_maps, last_stage_features

ERF_OUTPUTS = ("auto", "features", "cam")
ERF_NORMALIZE = ("z", "none")


def output_map_fn(model: nn.Module, output: str = "auto") -> Callable[[torch.Tensor], torch.Tensor]:
    """The map whose ERF is measured: ``auto`` = the model's own class maps if it has them, else
    the last stage's features; ``features``; ``cam`` (class maps / CAM)."""
    check(output in ERF_OUTPUTS, f"ERF output must be one of {ERF_OUTPUTS}, got {output!r}")
    has_class_maps = callable(getattr(model, "class_maps", None))
    if output == "cam" or (output == "auto" and has_class_maps):
        return lambda x: class_maps(model, x)
    if isinstance(model, StagedModel):
        return lambda x: last_stage_features(model, x)
    raise ConfigError(
        f"ERF output 'features' needs a StagedModel, got {type(model).__name__}; use output='cam'"
    )


def input_gradients(
    fmap: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    positions: list[tuple[int, int] | str],
) -> list[torch.Tensor]:
    """For each output position: d(sum_k X[b, k, i, j]) / dx, shape of ``x``, one backward per
    position (samples are independent: the model must be in eval mode). A position is (i, j)
    or "center" / "corner"."""
    x = x.detach().float().requires_grad_(True)
    out = fmap(x).float()
    h, w = out.shape[-2:]
    named = {"center": (h // 2, w // 2), "corner": (0, 0)}
    grads = []
    for n, pos in enumerate(positions):
        i, j = named[pos] if isinstance(pos, str) else pos
        check(0 <= i < h and 0 <= j < w, f"ERF position {(i, j)} outside the {h}x{w} output map")
        (grad,) = torch.autograd.grad(out[:, :, i, j].sum(), x, retain_graph=n < len(positions) - 1)
        grads.append(grad)
    return grads


def erf_value(grad: torch.Tensor, normalize: str = "z") -> torch.Tensor:
    """ERF(i, j), Def. 4.1 of Top-GAP: per image, the mean |gradient| over the input (after a
    per-image z-normalisation with ``normalize="z"``, see the module docstring): (B, ...) -> (B,).
    """
    check(normalize in ERF_NORMALIZE, f"ERF normalize must be one of {ERF_NORMALIZE}")
    flat = grad.flatten(1).float()
    if normalize == "z":
        flat = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-30)
    return flat.abs().mean(1)


def erf_distance(
    model: nn.Module, x: torch.Tensor, output: str = "auto", normalize: str = "z"
) -> dict[str, torch.Tensor]:
    """ERF(center), ERF(corner) and the ERF distance (Def. 4.1 of Top-GAP), each (B,), for
    images ``x`` in [0, 1]; the model is in eval mode during the call."""
    fmap = output_map_fn(model, output)
    with model_mode(model, "eval"), torch.enable_grad():
        center, corner = input_gradients(fmap, x, ["center", "corner"])
    values = {"center": erf_value(center, normalize), "corner": erf_value(corner, normalize)}
    values["distance"] = values["center"] - values["corner"]
    return values


def erf_map(
    model: nn.Module,
    x: torch.Tensor,
    position: tuple[int, int] | str = "center",
    output: str = "auto",
) -> torch.Tensor:
    """The ERF picture of one output position: sum over colour channels of |gradient|, (B, H, W)."""
    fmap = output_map_fn(model, output)
    with model_mode(model, "eval"), torch.enable_grad():
        (grad,) = input_gradients(fmap, x, [position])
    return grad.abs().sum(1)
