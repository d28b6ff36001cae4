"""robustfeat: feature-level robustness methods for CNN classifiers, evaluated honestly.

The public functions below are imported on first use (PEP 562), so ``import robustfeat`` and the
CLI's ``--help`` / ``list`` do not pay for torchvision, torchattacks or the evaluator until a
name that needs them is used.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the submodule that defines it
_PUBLIC = {
    "create_attack": "attacks",
    "list_attacks": "attacks",
    "evaluate": "evaluate",
    "create_method": "methods",
    "list_methods": "methods",
    "create_model": "models",
    "list_models": "models",
    "load_run": "runs",
}
__all__ = ["__version__", *_PUBLIC]

if TYPE_CHECKING:
    from .attacks import create_attack, list_attacks
    from .evaluate import evaluate
    from .methods import create_method, list_methods
    from .models import create_model, list_models
    from .runs import load_run


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


class _Package(types.ModuleType):
    """Importing the submodule ``robustfeat.evaluate`` sets the package attribute ``evaluate`` to
    that module; the public name is the function, as it was when imported eagerly."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _PUBLIC.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
