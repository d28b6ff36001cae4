"""Training methods on the Method contract; importing this package registers every method."""

import importlib
import pkgutil

from ._base import Method
from ._registry import METHODS, check_method_options, create_method, list_methods, register_method

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
