"""Method registry: ``@register_method`` on a ``Method`` subclass; its ``name`` is the key."""

from __future__ import annotations

import inspect
from typing import Any

from .._registry import Registry
from ..errors import ConfigError
from ..models.base import StagedModel
from ._base import Method

METHODS: Registry = Registry("method")
register_method = METHODS.register


def check_method_options(name: str, cfg: dict[str, Any]) -> None:
    """Raise if ``name`` is not a method or ``cfg`` has options it does not take."""
    cls = METHODS.get(name)
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [p for p in params if p not in {"self", "model"}]
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for method {name!r}; valid: {valid}")


def create_method(name: str, model: StagedModel, **cfg: Any) -> Method:
    """Wrap ``model`` in the registered method ``name`` with options ``cfg``.

    Unknown options are an error that lists the valid ones.
    """
    check_method_options(name, cfg)
    return METHODS.get(name)(model, **cfg)


def list_methods() -> list[str]:
    return METHODS.names()
