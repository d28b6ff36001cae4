"""Adversarial-training schemes: a separate axis composed with any Method.

A scheme turns a clean batch into what the method trains on. The trainer calls
``for out in scheme.steps(method, x, y): backward(out["loss"]); optimizer step`` — a scheme
yields one loss dict per optimizer step (Free-AT replays a batch several times), and the
generator resumes after each step so a scheme may reuse the input gradient of that step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch

from .._registry import Registry
from ..errors import ConfigError
from ..methods._base import Method

SCHEMES: Registry = Registry("adversarial-training scheme")
register_scheme = SCHEMES.register


class Scheme:
    """Base: the plain (no adversarial training) scheme trains on the clean batch."""

    name: ClassVar[str] = "none"
    #: optimizer steps per batch (Free-AT's m); budgets in epochs are divided by it
    replays: int = 1

    def steps(
        self, method: Method, x: torch.Tensor, y: torch.Tensor, forward: Callable | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Loss dicts, one per optimizer step. ``forward`` is the (possibly DDP-wrapped) callable
        to compute the method's training objective with; ``method`` is the unwrapped Method
        (for ``eval_model()`` and attack losses)."""
        yield (forward or method)(x, y)


def create_scheme(name: str | None, **cfg: Any) -> Scheme:
    """The scheme ``name`` (None or "none": plain training) with options ``cfg``."""
    if name in (None, "none"):
        if cfg:
            raise ConfigError(f"options {sorted(cfg)} given without an adversarial-training scheme")
        return Scheme()
    cls = SCHEMES.get(name)
    try:
        return cls(**cfg)
    except TypeError as err:
        raise ConfigError(f"bad options for scheme {name!r}: {err}") from err


def list_schemes() -> list[str]:
    return SCHEMES.names()
