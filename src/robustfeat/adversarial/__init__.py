"""Adversarial examples: the PGD/FGSM core and adversarial-training schemes."""

from .pgd import cw_loss, fgsm, model_mode, pgd
from .schemes import Scheme, create_scheme, list_schemes, register_scheme
