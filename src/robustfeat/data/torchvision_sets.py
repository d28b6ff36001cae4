"""CIFAR-10, CIFAR-100, SVHN and Fashion-MNIST through torchvision, as uint8 ImageDatasets.

torchvision reads the released files; nothing is downloaded unless ``download=True``. Files are
looked for under ``root`` (default: env ``ROBUSTFEAT_DATA`` or ``~/.cache/robustfeat/data``).
Fashion-MNIST is 1-channel 28×28: its gray channel is repeated to 3 channels so every model
sees RGB input (images stay 28×28).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ._registry import register_dataset
from .base import ImageDataset

_LOCAL_HINT = {
    "cifar10": " The CIFAR-10 JPEGs shipped with the project load as "
    "'zip:../shared/data/cifar10-jpeg.zip'.",
}


def default_data_root() -> Path:
    """Where torchvision datasets live unless ``root=`` / ``--data-root`` says otherwise."""
    env = os.environ.get("ROBUSTFEAT_DATA")
    return Path(env) if env else Path.home() / ".cache" / "robustfeat" / "data"


def _open(name: str, factory: Any, root: str | None, download: bool, **kwargs: Any) -> Any:
    """Instantiate a torchvision dataset; a missing file or failed download becomes a DataError."""
    directory = Path(root) if root else default_data_root()
    try:
        return factory(root=str(directory), download=download, **kwargs)
    except (RuntimeError, OSError) as err:  # "Dataset not found", URLError, missing files
        what = "could not be downloaded" if download else "was not found"
        raise DataError(
            f"dataset {name!r} {what} under {directory} ({err}). Point at local files with "
            f"root=PATH (CLI: --data-root PATH), pass download=True where the network allows, "
            f"or load an ImageFolder tree as 'folder:PATH' or 'zip:PATH'."
            + _LOCAL_HINT.get(name, "")
        ) from err


def to_image_dataset(
    images: np.ndarray | torch.Tensor,
    labels: Any,
    class_names: list[str],
    name: str,
    split: str,
    channels_last: bool,
) -> ImageDataset:
    """Wrap decoded uint8 pixels, (N, H, W), (N, H, W, C) or (N, C, H, W), as an ImageDataset.

    1-channel images are repeated to 3 channels.
    """
    pixels = torch.as_tensor(np.asarray(images, dtype=np.uint8))
    if pixels.ndim == 3:
        pixels = pixels.unsqueeze(-1 if channels_last else 1)
    if channels_last:
        pixels = pixels.permute(0, 3, 1, 2)
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return ImageDataset(
        images=pixels.contiguous(),
        labels=torch.as_tensor(np.asarray(labels), dtype=torch.int64),
        num_classes=len(class_names),
        class_names=list(class_names),
        name=name,
        meta={"source": name, "split": split},
    )


@register_dataset(name="cifar10")
def load_cifar10(split: str, *, root: str | None = None, download: bool = False) -> ImageDataset:
    """CIFAR-10 (50k train / 10k test, 32×32 RGB, 10 classes)."""
    from torchvision.datasets import CIFAR10

    source = _open("cifar10", CIFAR10, root, download, train=split == "train")
    return to_image_dataset(source.data, source.targets, source.classes, "cifar10", split, True)


@register_dataset(name="cifar100")
def load_cifar100(split: str, *, root: str | None = None, download: bool = False) -> ImageDataset:
    """CIFAR-100 (50k train / 10k test, 32×32 RGB, 100 fine classes)."""
    from torchvision.datasets import CIFAR100

    source = _open("cifar100", CIFAR100, root, download, train=split == "train")
    return to_image_dataset(source.data, source.targets, source.classes, "cifar100", split, True)


@register_dataset(name="svhn")
def load_svhn(split: str, *, root: str | None = None, download: bool = False) -> ImageDataset:
    """SVHN cropped digits (73,257 train / 26,032 test, 32×32 RGB; the 'extra' set is not used)."""
    from torchvision.datasets import SVHN

    source = _open("svhn", SVHN, root, download, split=split)
    digits = [str(d) for d in range(10)]
    return to_image_dataset(source.data, source.labels, digits, "svhn", split, False)


@register_dataset(name="fashion_mnist")
def load_fashion_mnist(
    split: str, *, root: str | None = None, download: bool = False
) -> ImageDataset:
    """Fashion-MNIST (60k train / 10k test, 28×28), gray repeated to 3 channels."""
    from torchvision.datasets import FashionMNIST

    source = _open("fashion_mnist", FashionMNIST, root, download, train=split == "train")
    return to_image_dataset(
        source.data, source.targets, source.classes, "fashion_mnist", split, True
    )
