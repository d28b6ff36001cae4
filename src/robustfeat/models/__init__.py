"""Backbones with the stage contract; importing this package registers every built-in model."""

import importlib
import pkgutil

from ._registry import MODELS, TIMM_MODELS_HINT, create_model, list_models, register_model
from .base import FeatureInfo, StagedModel

# Each module registers its models on import; new model files need no edit here.
for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_") and _info.name not in {"base", "normalize", "timm_adapter"}:
        importlib.import_module(f"{__name__}.{_info.name}")
