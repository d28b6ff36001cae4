"""The in-memory image dataset every loader returns.

Images are kept as one uint8 tensor (N, C, H, W) so CPU training never decodes or converts
per image; batches become float in [0, 1] only when drawn (normalization is the model's job).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass
class ImageDataset:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,), possibly noisy (see clean_labels); multi-label: (N, C) 0/1
    num_classes: int
    class_names: list[str]
    name: str = ""
    masks: torch.Tensor | None = None  # bool (N, H, W): ground-truth object masks, if known
    clean_labels: torch.Tensor | None = None  # int64 (N,): labels before injected label noise
    meta: dict = field(default_factory=dict)  # provenance: source path, options, seed

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                "images must be uint8 (N, C, H, W), "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        n = self.images.shape[0]
        if self.labels.shape not in ((n,), (n, self.num_classes)):
            raise ValueError("labels must be (N,) class indices or (N, num_classes) multi-hot rows")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        label = self.labels[index]
        return self.images[index].float().div_(255), label if self.multilabel else int(label)

    @property
    def multilabel(self) -> bool:
        """Labels are multi-hot rows (N, C) (e.g. the mosaic) rather than class indices."""
        return self.labels.ndim == 2

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor) -> ImageDataset:
        """A view of some samples (masks and clean labels follow)."""
        return replace(
            self,
            images=self.images[index],
            labels=self.labels[index],
            masks=None if self.masks is None else self.masks[index],
            clean_labels=None if self.clean_labels is None else self.clean_labels[index],
        )

    def float_images(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        images = self.images if index is None else self.images[index]
        return images.float().div_(255)

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the images in [0, 1] (for the model's Normalize)."""
        x = self.images.float().div_(255).transpose(0, 1).reshape(self.images.shape[1], -1)
        return x.mean(1).tolist(), x.std(1).tolist()
