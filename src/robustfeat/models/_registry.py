"""Backbone registry: ``@register_model`` on a factory ``fn(num_classes, **kw) -> StagedModel``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._registry import Registry
from ..config import check_options
from ..errors import ConfigError, UnknownNameError
from .base import StagedModel

MODELS: Registry = Registry("model")
register_model = MODELS.register

# Dataset statistics used when the caller does not pass any (CIFAR-10 train set).
DEFAULT_MEAN = (0.4914, 0.4822, 0.4465)
DEFAULT_STD = (0.2470, 0.2435, 0.2616)

# timm CNNs are built by name (timm/<name>, see timm_adapter.py), not registered one by one; this
# line goes next to list_models() wherever names are shown (CLI `list models`, unknown-name errors).
TIMM_PREFIX = "timm/"
TIMM_MODELS_HINT = (
    "timm/<name>: any timm CNN, e.g. timm/resnet18, timm/efficientnet_b0, timm/convnext_tiny"
)


def create_model(
    name: str,
    num_classes: int = 10,
    mean: Sequence[float] = DEFAULT_MEAN,
    std: Sequence[float] = DEFAULT_STD,
    **kwargs: Any,
) -> StagedModel:
    """Build a registered backbone (or ``timm/<name>``), input normalization as its first module.

    Inputs to the returned model are images in [0, 1].
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if name.startswith(TIMM_PREFIX):
        from .timm_adapter import create_timm_model  # imports timm only when asked for

        model = create_timm_model(name.removeprefix(TIMM_PREFIX), num_classes, **kwargs)
    else:
        try:
            factory = MODELS.get(name)
        except UnknownNameError as err:
            raise UnknownNameError(f"{err}; or {TIMM_MODELS_HINT}") from None
        check_options(factory, kwargs, f"model {name!r}", skip=("num_classes",))
        try:
            model = factory(num_classes=num_classes, **kwargs)
        except TypeError as err:  # unexpected keyword from a recipe or the CLI
            raise ConfigError(f"bad options for model {name!r}: {err}") from err
    model.set_normalization(mean, std)
    model.model_name = name
    return model


def list_models() -> list[str]:
    """Registered backbone names (timm CNNs come on top: see ``TIMM_MODELS_HINT``)."""
    return MODELS.names()
