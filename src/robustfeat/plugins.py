"""Plugins: methods, models, attacks, datasets, schemes or augmentations registered from the
user's own module, usable from the CLI like the built-in ones.

A plugin is an ordinary Python module that registers things with the registries' decorators
(``@register_method``, ``@register_model``, ``@register_attack``, ...) when it is imported. The
CLI imports plugins before it runs a command, so ``train``, ``eval``, ``bench``, ``list`` and the
figure commands all see their registrations. Two ways in:

- ``robustfeat --plugin MODULE ...`` (repeatable, also after the command name): a module name
  importable from ``sys.path`` or the current directory (``my_methods``, ``my_pkg.robust``), or
  the path of a ``.py`` file.
- the ``robustfeat.plugins`` entry-point group of an installed distribution, loaded by every
  command; in the plugin's ``pyproject.toml``::

      [project.entry-points."robustfeat.plugins"]
      my_methods = "my_pkg.my_methods"

  An entry point may also name a function (``"my_pkg:register"``); it is called with no arguments.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from .errors import RobustfeatError

ENTRY_POINT_GROUP = "robustfeat.plugins"


def load_plugin(spec: str) -> ModuleType:
    """Import the plugin ``spec``: a module name, or the path of a ``.py`` file."""
    if spec.endswith(".py"):
        return _load_file(Path(spec))
    if os.getcwd() not in sys.path:  # as `python -m` would: the user's module beside them
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as err:
        if err.name is None or not (spec == err.name or spec.startswith(f"{err.name}.")):
            raise  # the plugin itself imports something missing: its traceback says what
        raise RobustfeatError(
            f"cannot import plugin {spec!r}: no module named {err.name!r} (a plugin is a module "
            "on sys.path or in the current directory, or the path of a .py file)"
        ) from None


def _load_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise RobustfeatError(f"plugin file {str(path)!r} does not exist")
    name = path.stem
    if name in sys.modules:
        module = sys.modules[name]
        if Path(getattr(module, "__file__", "") or "").resolve() == path.resolve():
            return module  # already loaded: registering twice would be an error
        raise RobustfeatError(
            f"plugin file {str(path)!r}: a module named {name!r} is already imported; "
            "rename the file"
        )
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RobustfeatError(f"plugin {str(path)!r} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it, as an import would (dataclasses need it)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_entry_point_plugins() -> list[str]:
    """Load every installed ``robustfeat.plugins`` entry point; the names loaded."""
    names = []
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry_point.load()
        except ModuleNotFoundError as err:
            raise RobustfeatError(
                f"plugin entry point {entry_point.name!r} ({entry_point.value}) of group "
                f"{ENTRY_POINT_GROUP!r} cannot be imported: {err}"
            ) from None
        if callable(loaded):
            loaded()
        names.append(entry_point.name)
    return names


def load_plugins(specs: Iterable[str] = ()) -> None:
    """The installed entry-point plugins, then each ``--plugin`` in order."""
    load_entry_point_plugins()
    for spec in specs:
        load_plugin(spec)
