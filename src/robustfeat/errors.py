"""User-facing errors: the CLI turns these into one clear message and exit code 2."""

from __future__ import annotations

import importlib
from types import ModuleType


class RobustfeatError(Exception):
    """Bad input (name, value, file); the message says what is wrong and what is valid."""


class ConfigError(RobustfeatError, ValueError):
    """A configuration value has the wrong type or range, or options do not combine."""


class UnknownNameError(RobustfeatError, KeyError):
    """A registry lookup for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DataError(RobustfeatError):
    """A dataset cannot be read: missing path, corrupt image, inconsistent shapes."""


class CheckpointError(RobustfeatError):
    """A checkpoint is missing, truncated, corrupt, unsafe, or does not fit the model."""


class OutputError(RobustfeatError):
    """An output (run directory, checkpoint, results) cannot be written: permissions, disk full."""


class MissingExtraError(RobustfeatError, ImportError):
    """An optional dependency (a pip extra of robustfeat) that a feature needs is not installed."""


def import_extra(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` of the optional extra ``extra``, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{feature} needs the optional package {err.name or module!r}, not installed: "
            f"pip install 'robustfeat[{extra}]'"
        ) from None


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless condition holds (validation of user-provided values)."""
    if not condition:
        raise ConfigError(message)
