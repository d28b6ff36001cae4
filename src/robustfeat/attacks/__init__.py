"""Evaluation attacks: a registry of ``(model, x, y) -> x_adv`` attacks with one interface.

Own core (``robustfeat.adversarial.pgd``): ``fgsm``, ``pgd``, ``cw``. From torchattacks:
``apgd_ce``, ``apgd_t``, ``fab_t``, ``square``, ``autoattack`` (reference "standard" settings).
Adaptive attacks from a Method's ``attack_losses()`` live in ``adaptive``.
"""

from . import autoattack, gradient
from .adaptive import adaptive_attacks, worst_case
from .base import ATTACKS, Attack, AttackOutput, create_attack, list_attacks, register_attack
