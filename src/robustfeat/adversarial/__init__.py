"""Adversarial examples: the PGD/FGSM core and adversarial-training schemes."""

from ..runtime import model_mode  # public here before robustfeat.runtime existed
from .pgd import cw_loss, fgsm, pgd
from .schemes import Scheme, create_scheme, list_schemes, register_scheme
