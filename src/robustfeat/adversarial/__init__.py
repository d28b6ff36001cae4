"""Adversarial examples: the PGD/FGSM core and adversarial-training schemes."""

from ..losses import cw_loss  # public here before robustfeat.losses existed
from ..runtime import model_mode  # public here before robustfeat.runtime existed
from .pgd import fgsm, pgd
from .schemes import Scheme, create_scheme, list_schemes, register_scheme
