"""A small name -> factory registry shared by models, methods, datasets, attacks and schemes.

The function or class name is the key (lower-cased for classes unless a ``name`` is given);
an unknown name is an error that lists the valid ones.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, obj: T | None = None, *, name: str | None = None) -> Any:
        """Decorator: ``@reg.register`` or ``@reg.register(name="x")``."""

        def add(item: T) -> T:
            key = name or getattr(item, "name", None) or item.__name__
            if not isinstance(key, str):
                key = item.__name__
            if key in self._entries and self._entries[key] is not item:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = item
            return item

        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        if name not in self._entries:
            valid = ", ".join(sorted(self._entries))
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}.{hint} Valid: {valid}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
