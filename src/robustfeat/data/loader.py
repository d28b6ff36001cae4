"""Batch iteration over an in-memory ImageDataset, reproducible to the batch.

The order of epoch e is a permutation drawn from a generator seeded by (seed, e); the
augmentation of batch i of epoch e draws from a generator seeded by (seed, e, i). Nothing
depends on what was drawn before, so ``batches(epoch, start)`` after a restart yields exactly
the batches an uninterrupted run would have yielded from that point (bit for bit).

``batch_size`` is the GLOBAL batch: with ``world_size`` > 1 every rank builds and augments the
same global batch and keeps its own contiguous slice, so the union over ranks is exactly the
single-process batch whatever the number of ranks. A torch ``DataLoader`` is not used because
the data is already one uint8 tensor in memory: indexing it is faster than worker processes.

``resident=True`` (config ``loader: device``) keeps the uint8 images and labels on ``device``
(copied there once, at the first epoch): the epoch's order goes to the device once per epoch, and
indexing, the uint8 -> float conversion and the augmentation all run there, so no image crosses
from the host per batch. Only the per-image random parameters (crop offsets, flip flags, ... a
few bytes per image; image-sized only for Random Erasing with ``fill: random``, whose noise is
drawn there too) are still drawn on the CPU generator and copied over: that keeps the batches
identical to the host loader's for a seed, on any device. For datasets that fit in device memory
(CIFAR-10's 50,000 training images are 150 MiB); a dataset larger than half the free device
memory is refused with a clear error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from ..errors import ConfigError, DataError
from ._seed import make_generator
from .base import ImageDataset

AugmentFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
RESIDENT_MAX_FRACTION = 0.5  # of the device's free memory a resident dataset may take


def _to_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 batch -> float32 in [0, 1] on ``device`` (converted after the copy: 4× fewer bytes)."""
    if device.type == "cuda" and images.device.type == "cpu":
        images = images.pin_memory()
    return images.to(device, non_blocking=True).float().div_(255)


def to_resident(
    tensors: tuple[torch.Tensor, ...], device: torch.device
) -> tuple[torch.Tensor, ...]:
    """``tensors`` copied to ``device`` once, refused (DataError) if they would take more than
    ``RESIDENT_MAX_FRACTION`` of its free memory."""
    if device.type == "cuda":
        need = sum(t.numel() * t.element_size() for t in tensors)
        free, _ = torch.cuda.mem_get_info(device)
        if need > RESIDENT_MAX_FRACTION * free:
            raise DataError(
                f"loader: device needs {need / 2**30:.2f} GiB on {device} for the training set, "
                f"more than {RESIDENT_MAX_FRACTION:.0%} of the {free / 2**30:.2f} GiB free; "
                "use loader: host"
            )
    return tuple(t.to(device) for t in tensors)


class BatchLoader:
    """Shuffled, augmented training batches ``(x float32 in [0, 1], y int64)`` on ``device``."""

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = True,
        augment: AugmentFn | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device = "cpu",
        resident: bool = False,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if batch_size % world_size:
            raise ConfigError(
                f"batch_size {batch_size} (global) must be divisible by world_size {world_size}"
            )
        if drop_last and len(dataset) < batch_size:
            raise DataError(
                f"dataset has {len(dataset)} samples, fewer than one batch of {batch_size} "
                "(lower batch_size or use drop_last=False)"
            )
        self.dataset, self.batch_size = dataset, batch_size
        self.shuffle, self.drop_last, self.augment = shuffle, drop_last, augment
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.device = torch.device(device)
        self.resident = resident
        self._source: tuple[torch.Tensor, ...] | None = None  # (images, labels) batches come from

    def source(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 images, labels) that batches are indexed from: the dataset's, or with
        ``resident`` their copies on the device (made on the first call)."""
        if self._source is None:
            tensors = (self.dataset.images, self.dataset.labels)
            self._source = to_resident(tensors, self.device) if self.resident else tensors
        images, labels = self._source
        return images, labels

    def __len__(self) -> int:
        """Batches per epoch."""
        count = len(self.dataset) / self.batch_size
        return math.floor(count) if self.drop_last else math.ceil(count)

    def order(self, epoch: int) -> torch.Tensor:
        """The sample order of ``epoch`` (all ranks agree on it)."""
        if not self.shuffle:
            return torch.arange(len(self.dataset))
        return torch.randperm(len(self.dataset), generator=make_generator(self.seed, epoch))

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches ``start``, ``start + 1``, ... of ``epoch`` (this rank's slice of each)."""
        if not 0 <= start <= len(self):
            raise ConfigError(f"start batch must be in [0, {len(self)}], got {start}")
        images, labels = self.source()
        order = self.order(epoch).to(images.device)
        for i in range(start, len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = _to_float(images[index], self.device)
            if self.augment is not None:
                x = self.augment(x, make_generator(self.seed, epoch, i))
            # Contiguous per-rank slices; an uneven last batch (drop_last=False) splits as evenly
            # as possible.
            n = index.numel()
            part = slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)
            yield x[part], labels[index[part]].to(self.device, non_blocking=True)


def iterate_batches(
    dataset: ImageDataset,
    batch_size: int,
    device: str | torch.device = "cpu",
    *,
    with_masks: bool = False,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Evaluation batches in dataset order, no augmentation: ``(x, y)`` or ``(x, y, masks)``."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if with_masks and dataset.masks is None:
        raise DataError(f"dataset {dataset.name!r} has no ground-truth object masks")
    device = torch.device(device)
    for begin in range(0, len(dataset), batch_size):
        window = slice(begin, begin + batch_size)
        x = _to_float(dataset.images[window], device)
        y = dataset.labels[window].to(device)
        if with_masks:
            yield x, y, dataset.masks[window].to(device)
        else:
            yield x, y
