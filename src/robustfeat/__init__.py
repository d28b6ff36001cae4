"""robustfeat: feature-level robustness methods for CNN classifiers, evaluated honestly."""

from .methods import create_method, list_methods
from .models import create_model, list_models

__version__ = "0.1.0"
