"""``mosaic:<dataset>``: a multi-label dataset of grid x grid tiles of any single-label dataset.

Each mosaic is ``grid**2`` images of the source split (row-major tiles) put side by side; its
label is the *set* of classes present, as a float32 multi-hot row (N, num_classes) (a class may
fill several tiles). Tile classes are kept (``tile_labels``, row-major), so the localisation of
each class is known: ``class_masks(index)`` gives, per class, the union of its tiles, or of its
objects' masks when the source has masks (``shapes``). This is the multi-label setting of HNC
(Sun et al. 2020, Sec. 4.2 / Table 4: weighted sigmoid cross-entropy, mAP, per-class and overall
P/R/F1) on data small enough for a CPU.

Use: ``--data mosaic:shapes``, ``--data mosaic:zip:/path/cifar10-jpeg.zip``. Options
(``--data-arg``): ``grid`` (2); ``n_train`` / ``n_test`` (default: each source image used once,
``len // grid**2`` mosaics); ``resize`` (False: the mosaic is grid times the source side, e.g.
64x64 from CIFAR; True: tiles are area-downsampled so the mosaic keeps the source size);
``mosaic_seed``; ``base_args`` (options of the source dataset, e.g. ``{n_train: 4000}``).
Train and test mosaics are drawn from the source's train and test splits with separate seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import DataError, check
from ._registry import load_dataset, register_path_form
from ._seed import make_generator
from .base import ImageDataset


@dataclass
class MosaicDataset(ImageDataset):
    tile_labels: torch.Tensor | None = None  # int64 (N, grid**2): class of each tile, row-major
    grid: int = 2

    def subset(self, index: torch.Tensor) -> MosaicDataset:
        out = super().subset(index)
        return replace(out, tile_labels=self.tile_labels[index])

    def class_masks(self, index: torch.Tensor) -> torch.Tensor:
        """bool (n, num_classes, H, W): where each class is, for samples ``index``: the union of
        its tiles, intersected with the object masks when the source had masks."""
        index = torch.as_tensor(index)
        tiles = self.tile_labels[index]
        n, (height, width) = tiles.shape[0], self.images.shape[-2:]
        objects = (
            self.masks[index]
            if self.masks is not None
            else torch.ones(n, height, width, dtype=torch.bool)
        )
        out = torch.zeros(n, self.num_classes, height, width, dtype=torch.bool)
        th, tw = height // self.grid, width // self.grid
        rows = torch.arange(n)
        for t in range(self.grid**2):
            r, c = divmod(t, self.grid)
            region = (slice(r * th, (r + 1) * th), slice(c * tw, (c + 1) * tw))
            out[rows, tiles[:, t], region[0], region[1]] |= objects[:, region[0], region[1]]
        return out


def tile(images: torch.Tensor, grid: int) -> torch.Tensor:
    """(N, grid**2, ..., S, S) -> (N, ..., grid*S, grid*S), tiles in row-major order."""
    n, _, *middle, s, s2 = images.shape
    out = images.reshape(n, grid, grid, *middle, s, s2)
    dims = len(middle)
    # (n, gr, gc, *middle, s, s2) -> (n, *middle, gr, s, gc, s2)
    order = (0, *range(3, 3 + dims), 1, 3 + dims, 2, 4 + dims)
    return out.permute(order).reshape(n, *middle, grid * s, grid * s2)


def make_mosaic(
    source: ImageDataset, n: int, grid: int, resize: bool, generator: torch.Generator
) -> MosaicDataset:
    """``n`` mosaics of ``grid`` x ``grid`` random tiles of ``source`` (each source image used at
    most once while ``n * grid**2 <= len(source)``, else drawn with replacement)."""
    if source.multilabel:
        raise DataError(f"mosaic needs a single-label source dataset, got {source.name!r}")
    count = grid**2
    if n * count <= len(source):
        index = torch.randperm(len(source), generator=generator)[: n * count]
    else:
        index = torch.randint(len(source), (n * count,), generator=generator)
    index = index.reshape(n, count)
    images = tile(source.images[index], grid)
    masks = None if source.masks is None else tile(source.masks[index], grid)
    if resize:  # area-average back to the source size
        images = F.avg_pool2d(images.float(), grid).round().to(torch.uint8)
        if masks is not None:
            masks = F.avg_pool2d(masks[:, None].float(), grid)[:, 0] >= 0.5
    tile_labels = source.labels[index]
    labels = torch.zeros(n, source.num_classes).scatter_(1, tile_labels, 1.0)
    return MosaicDataset(
        images=images.contiguous(),
        labels=labels,
        num_classes=source.num_classes,
        class_names=list(source.class_names),
        name=f"mosaic:{source.name}",
        masks=None if masks is None else masks.contiguous(),
        tile_labels=tile_labels,
        grid=grid,
    )


@register_path_form(name="mosaic")
def load_mosaic(
    path: str,
    split: str,
    *,
    root: str | None = None,
    download: bool = False,
    grid: int = 2,
    n_train: int | None = None,
    n_test: int | None = None,
    resize: bool = False,
    mosaic_seed: int = 0,
    base_args: dict[str, Any] | None = None,
) -> MosaicDataset:
    """Mosaics of the dataset ``path`` (any dataset spec: ``shapes``, ``zip:PATH``, ...)."""
    check(isinstance(grid, int) and grid >= 1, f"mosaic grid must be an int >= 1, got {grid!r}")
    check(base_args is None or isinstance(base_args, dict), "mosaic base_args must be a mapping")
    source = load_dataset(path, split, root=root, download=download, **(base_args or {}))
    side = source.images.shape[-1]
    check(
        not resize or side % grid == 0,
        f"mosaic resize needs the source side ({side}) divisible by grid ({grid})",
    )
    n = n_train if split == "train" else n_test
    n = len(source) // grid**2 if n is None else n
    check(isinstance(n, int) and n >= 1, f"mosaic n_{split} must be an int >= 1, got {n!r}")
    dataset = make_mosaic(source, n, grid, resize, make_generator("mosaic", mosaic_seed, split))
    dataset.meta.update(
        source=source.meta or {"name": source.name},
        split=split,
        grid=grid,
        resize=resize,
        mosaic_seed=mosaic_seed,
    )
    return dataset
