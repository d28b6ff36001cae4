"""Pictures: the positive CAM and the top-k negative CAMs of each image (HNC, Fig. 1).

One row per image: the image, then the class map of its (highest-scoring) true class, then the
maps of the k highest-probability negative classes, each titled with the class name and its
predicted probability. The maps of one row share one colour scale (the row's min and max), so a
flat negative map looks flat instead of being stretched to full contrast. Figures are built with
``matplotlib.figure.Figure`` (no pyplot, no global backend change) and saved as PNG.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from ..errors import ConfigError
from ..runtime import model_mode
from .cam import class_maps, grad_cam, positives_mask, ranked_negatives


def cam_panel(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(maps (B, 1 + k, H, W) at input size, classes (B, 1 + k), probabilities (B, 1 + k)) of the
    true class and the top-k negative classes. Class maps when the model has them, else
    Grad-CAM (then each map is already min-max normalised by pytorch-grad-cam)."""
    with torch.no_grad(), model_mode(model, "eval"):
        logits = model(x).float()
        try:
            maps = class_maps(model, x).float()
        except ConfigError:  # no class maps: Grad-CAM below
            maps = None
    probs = logits.softmax(1)
    positives = positives_mask(y, logits.shape[1])
    positive = logits.masked_fill(~positives, float("-inf")).argmax(1, keepdim=True)
    classes = torch.cat([positive, ranked_negatives(logits, positives, k)], 1)
    if maps is not None:
        chosen = maps.gather(1, classes[:, :, None, None].expand(-1, -1, *maps.shape[-2:]))
        chosen = F.interpolate(chosen, size=x.shape[-2:], mode="bilinear", align_corners=False)
    else:
        columns = [grad_cam(model, x, classes[:, j]).to(x.device) for j in range(classes.shape[1])]
        chosen = torch.stack(columns, 1)
    return chosen, classes, probs.gather(1, classes)


def cam_figure(
    images: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor,
    probs: torch.Tensor,
    class_names: Sequence[str],
    title: str = "",
) -> Figure:
    """The grid of ``cam_panel``'s output over ``images`` (B, 3, H, W) in [0, 1]."""
    rows, cols = maps.shape[0], maps.shape[1] + 1
    fig = Figure(figsize=(1.6 * cols, 1.7 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    images, maps = images.detach().cpu(), maps.detach().cpu()
    for r in range(rows):
        picture = images[r].permute(1, 2, 0).clamp(0, 1).numpy()
        low, high = float(maps[r].min()), float(maps[r].max())
        axes[r][0].imshow(picture)
        axes[r][0].set_title("image", fontsize=7)
        for c in range(maps.shape[1]):
            ax = axes[r][c + 1]
            ax.imshow(picture)
            ax.imshow(maps[r, c].numpy(), cmap="jet", alpha=0.5, vmin=low, vmax=high)
            kind = "+" if c == 0 else f"-{c}"
            name = class_names[int(classes[r, c])]
            ax.set_title(f"{kind} {name} {float(probs[r, c]):.2f}", fontsize=7)
        for ax in axes[r]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def save_cam_figure(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    class_names: Sequence[str],
    path: str | Path,
    k: int = 4,
    title: str = "",
) -> Path:
    """Positive + top-``k`` negative CAMs of images ``x`` (labels ``y``) saved as a PNG."""
    maps, classes, probs = cam_panel(model, x, y, k)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cam_figure(x, maps, classes, probs, class_names, title).savefig(path, dpi=120)
    return path
