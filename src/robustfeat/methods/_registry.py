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


def create_method(name: str, model: StagedModel, **cfg: Any) -> Method:
    """Wrap ``model`` in the registered method ``name`` with options ``cfg``.

    Unknown options are an error that lists the valid ones.
    """
    cls = METHODS.get(name)
    params = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    valid = [p for p in params if p not in {"self", "model"}]
    unknown = sorted(set(cfg) - set(valid))
    if unknown and not accepts_any:
        raise ConfigError(f"unknown option(s) {unknown} for method {name!r}; valid: {valid}")
    return cls(model, **cfg)


def list_methods() -> list[str]:
    return METHODS.names()
