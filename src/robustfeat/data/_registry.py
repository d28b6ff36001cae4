"""Dataset registry and the one entry point ``load_dataset(spec, split, ...)``.

A registered dataset is a function ``fn(split, *, root, download, **options) -> ImageDataset``
registered with ``@register_dataset`` (its name is the key). Path forms ``folder:PATH`` and
``zip:PATH`` are functions ``fn(path, split, *, root, download, **options)`` registered with
``@register_path_form``. Options a loader does not declare are a ConfigError listing the valid ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .._registry import Registry
from ..config import check_option_types
from ..errors import ConfigError, UnknownNameError
from .base import ImageDataset

SPLITS = ("train", "test")
_COMMON_PARAMS = {"path", "split", "root", "download"}

DATASETS: Registry = Registry("dataset")
register_dataset = DATASETS.register
PATH_FORMS: Registry = Registry("dataset path form")
register_path_form = PATH_FORMS.register


def list_datasets() -> list[str]:
    """Registered dataset names (path forms ``folder:PATH`` / ``zip:PATH`` come on top)."""
    return DATASETS.names()


def dataset_options(spec: str) -> list[str]:
    """The options (``**options`` of ``load_dataset``) that dataset ``spec`` accepts."""
    return sorted(_option_defaults(_resolve(spec)[0]))


def check_dataset_spec(spec: str) -> None:
    """Raise UnknownNameError / ConfigError now if ``spec`` names no dataset (nothing is loaded)."""
    _resolve(spec)


def load_dataset(
    spec: str,
    split: str = "train",
    root: str | None = None,
    download: bool = False,
    **options: Any,
) -> ImageDataset:
    """Load one split of a dataset as an in-memory uint8 ``ImageDataset``.

    ``spec`` is a registered name (see ``list_datasets()``) or ``folder:PATH`` / ``zip:PATH``
    (an ImageFolder tree, plain or zipped). ``root`` is where downloadable datasets live;
    ``download=True`` lets torchvision fetch them when the network allows.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    loader, path = _resolve(spec)
    valid = _option_defaults(loader)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none"
        raise ConfigError(f"unknown option(s) {unknown} for dataset {spec!r}; valid: {listing}")
    check_option_types(loader, options, f"dataset {spec!r}")
    if path is None:
        return loader(split, root=root, download=download, **options)
    return loader(path, split, root=root, download=download, **options)


def _resolve(spec: str) -> tuple[Callable[..., ImageDataset], str | None]:
    form, sep, path = spec.partition(":")
    if sep and form in PATH_FORMS:
        if not path:
            raise ConfigError(f"dataset {spec!r} needs a path after '{form}:'")
        return PATH_FORMS.get(form), path
    try:
        return DATASETS.get(spec), None
    except UnknownNameError as err:
        forms = " or ".join(f"{f}:PATH" for f in PATH_FORMS.names())
        raise UnknownNameError(f"{err} (or {forms})") from None


def _option_defaults(loader: Callable[..., ImageDataset]) -> dict[str, Any]:
    params = inspect.signature(loader).parameters.values()
    return {p.name: p.default for p in params if p.name not in _COMMON_PARAMS}
