"""Training data for one run: validation carve-out, per-class subsets, injected label noise.

``prepare_data`` applies, in this order and each from its own seed derived from ``seed``:

0. for a folder without ``train/`` and ``test/`` (one tree serves both splits,
   ``meta["whole_tree"]``), a stratified ``test_fraction`` of it held out as the test split
   (``held_out_test``; ``robustfeat eval`` holds out the same images: ``evaluation_split``),
   so that no run is ever scored on its own training images; recorded as
   ``meta["held_out_test"]``,
1. a stratified validation split carved from train (``val_fraction``; labels stay clean),
2. a per-class subset of the remaining train samples (``samples_per_class``, low-data runs),
3. label noise on the train labels only (``label_noise``, ``label_noise_type``).

Label noise follows HNC (Sun et al. 2020, §4.5 / Table 6), which follows PENCIL (Yi & Wu 2019):

- ``symmetric``: with probability r a label is replaced by a class drawn uniformly from ALL
  classes ("uniformly distributed among all categories"); the official PENCIL script
  ``addnoise_SN.py`` draws ``randint(0, C)``, so the replacement can be the true class and
  the expected fraction of wrong labels is r·(C−1)/C.
- ``asymmetric``: with probability r a label y becomes (y + 1) mod C ("flipped to the next class
  circularly"); every flip is wrong.

The realized rates are recorded in ``train.meta["label_noise"]``; the clean labels are kept in
``train.clean_labels``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError, DataError, check
from ._registry import load_dataset
from ._seed import make_generator
from .base import ImageDataset

NOISE_TYPES = ("symmetric", "asymmetric")


@dataclass
class DataSplits:
    train: ImageDataset
    val: ImageDataset | None
    test: ImageDataset
    num_classes: int
    mean: list[float]  # per-channel statistics of the train split, in [0, 1]
    std: list[float]


def stratified_split(
    labels: torch.Tensor, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held_out) sorted indices; each class gives round(fraction · n_class) to held_out."""
    held = []
    for k in labels.unique().tolist():
        members = (labels == k).nonzero().squeeze(1)
        count = round(fraction * members.numel())
        held.append(members[torch.randperm(members.numel(), generator=generator)[:count]])
    held_out = torch.cat(held).sort().values
    keep = torch.ones(labels.numel(), dtype=torch.bool)
    keep[held_out] = False
    return keep.nonzero().squeeze(1), held_out


def per_class_subset(
    labels: torch.Tensor, samples_per_class: int, generator: torch.Generator
) -> torch.Tensor:
    """Sorted indices of ``samples_per_class`` random samples of every class present."""
    chosen = []
    for k in labels.unique().tolist():
        members = (labels == k).nonzero().squeeze(1)
        if members.numel() < samples_per_class:
            raise DataError(
                f"samples_per_class={samples_per_class} but class {k} has only "
                f"{members.numel()} training samples"
            )
        chosen.append(
            members[torch.randperm(members.numel(), generator=generator)[:samples_per_class]]
        )
    return torch.cat(chosen).sort().values


def _check_noise_type(kind: str) -> None:
    if kind not in NOISE_TYPES:
        raise ConfigError(f"label_noise_type must be one of {', '.join(NOISE_TYPES)}, got {kind!r}")


def noisy_labels(
    labels: torch.Tensor, num_classes: int, rate: float, kind: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(noisy labels, resampled mask): each label is resampled with probability ``rate``.

    symmetric: a resampled label is uniform over all ``num_classes`` classes (PENCIL / HNC);
    asymmetric: a resampled label y becomes (y + 1) mod ``num_classes`` (HNC §4.5).
    """
    _check_noise_type(kind)
    resampled = torch.rand(labels.numel(), generator=generator) < rate
    if kind == "symmetric":
        replacement = torch.randint(num_classes, labels.shape, generator=generator)
    else:
        replacement = (labels + 1) % num_classes
    return torch.where(resampled, replacement, labels), resampled


def held_out_test(
    tree: ImageDataset, test_fraction: float, seed: int
) -> tuple[ImageDataset, ImageDataset]:
    """(train, test) of a whole tree: a stratified ``test_fraction`` held out as test, drawn
    from its own seed; the same for every run with that ``seed`` (``data_seed``)."""
    kept, held = stratified_split(tree.labels, test_fraction, make_generator(seed, "test"))
    record = {"held_out_test": {"fraction": test_fraction, "seed": seed, "n_test": len(held)}}
    train, test = tree.subset(kept), tree.subset(held)
    train.meta, test.meta = {**tree.meta, **record}, {**tree.meta, **record, "split": "test"}
    return train, test


def evaluation_split(
    spec: str, *, test_fraction: float = 0.2, seed: int = 0, **dataset_options: Any
) -> ImageDataset:
    """The test split a run on ``spec`` is evaluated on (a whole tree's held-out part)."""
    test = load_dataset(spec, "test", **dataset_options)
    if test.meta.get("whole_tree"):
        test = held_out_test(test, test_fraction, seed)[1]
    return test


def prepare_data(
    spec: str,
    *,
    samples_per_class: int | None = None,
    label_noise: float = 0.0,
    label_noise_type: str = "symmetric",
    val_fraction: float = 0.0,
    test_fraction: float = 0.2,
    seed: int = 0,
    root: str | None = None,
    download: bool = False,
    **dataset_options: Any,
) -> DataSplits:
    """Load ``spec`` (see ``load_dataset``) and build the train / val / test splits of a run."""
    check(0.0 <= label_noise <= 1.0, f"label_noise must be in [0, 1], got {label_noise!r}")
    check(0.0 <= val_fraction < 1.0, f"val_fraction must be in [0, 1), got {val_fraction!r}")
    check(
        samples_per_class is None
        or (isinstance(samples_per_class, int) and samples_per_class >= 1),
        f"samples_per_class must be None or an integer >= 1, got {samples_per_class!r}",
    )
    _check_noise_type(label_noise_type)
    train = load_dataset(spec, "train", root=root, download=download, **dataset_options)
    test = load_dataset(spec, "test", root=root, download=download, **dataset_options)
    if train.meta.get("whole_tree"):  # one tree for both splits: never test on training images
        check(0.0 < test_fraction < 1.0, f"test_fraction must be in (0, 1), got {test_fraction!r}")
        train, test = held_out_test(train, test_fraction, seed)
    if train.num_classes != test.num_classes or train.image_shape != test.image_shape:
        raise DataError(
            f"{spec}: train and test disagree ({train.num_classes} vs {test.num_classes} classes, "
            f"images {train.image_shape} vs {test.image_shape})"
        )
    if list(train.class_names) != list(test.class_names):  # labels are indices into these
        differ = next(
            (a, b) for a, b in zip(train.class_names, test.class_names, strict=True) if a != b
        )
        raise DataError(
            f"{spec}: train and test classes differ by name (train {differ[0]!r} vs test "
            f"{differ[1]!r} at the same label); class folders must have the same names"
        )
    check(
        not train.multilabel
        or (val_fraction == 0 and samples_per_class is None and not label_noise),
        f"{spec} has multi-label targets: val_fraction, samples_per_class and label_noise "
        "(per-class operations on single labels) are not supported for it",
    )
    val = None
    if val_fraction > 0:
        kept, held_out = stratified_split(train.labels, val_fraction, make_generator(seed, "val"))
        train, val = train.subset(kept), train.subset(held_out)
        val.meta = {**val.meta, "split": "val", "val_fraction": val_fraction}
    if samples_per_class is not None:
        chosen = per_class_subset(train.labels, samples_per_class, make_generator(seed, "subset"))
        train = train.subset(chosen)
    meta = {**train.meta, "val_fraction": val_fraction, "samples_per_class": samples_per_class}
    if label_noise > 0:
        clean = train.labels
        noisy, resampled = noisy_labels(
            clean, train.num_classes, label_noise, label_noise_type, make_generator(seed, "noise")
        )
        train.labels, train.clean_labels = noisy, clean
        meta["label_noise"] = {
            "type": label_noise_type,
            "rate": label_noise,
            "resampled_fraction": resampled.float().mean().item(),
            "realized_rate": (noisy != clean).float().mean().item(),  # fraction of wrong labels
            "seed": seed,
        }
    train.meta = meta
    mean, std = train.channel_stats()
    return DataSplits(
        train=train, val=val, test=test, num_classes=train.num_classes, mean=mean, std=std
    )
