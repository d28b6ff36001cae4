"""Method registry: ``@register_method`` on a ``Method`` subclass; its ``name`` is the key."""

from __future__ import annotations

from typing import Any

from .._registry import Registry
from ..config import check_options
from ..models.base import StagedModel
from ._base import Method

METHODS: Registry = Registry("method")
register_method = METHODS.register


def check_method_options(name: str, cfg: dict[str, Any]) -> None:
    """Raise if ``name`` is not a method, or ``cfg`` has options it does not take or values of
    the wrong type (checked against the annotations of its ``__init__``)."""
    check_options(METHODS.get(name).__init__, cfg, f"method {name!r}", skip=("model",))


def create_method(name: str, model: StagedModel, **cfg: Any) -> Method:
    """Wrap ``model`` in the registered method ``name`` with options ``cfg``.

    Unknown options are an error that lists the valid ones.
    """
    check_method_options(name, cfg)
    return METHODS.get(name)(model, **cfg)


def list_methods() -> list[str]:
    return METHODS.names()
