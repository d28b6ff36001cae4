"""robustfeat: feature-level robustness methods for CNN classifiers, evaluated honestly."""

from .attacks import create_attack, list_attacks
from .evaluate import evaluate
from .methods import create_method, list_methods
from .models import create_model, list_models
from .runs import load_run

__version__ = "0.1.0"
