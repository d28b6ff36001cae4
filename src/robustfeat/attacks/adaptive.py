"""Adaptive attacks from a Method's own ``attack_losses()`` and the per-sample worst case.

A defence with auxiliary heads or feature-level machinery (CIFS's probe nets, ...) can look
robust to attacks on the final logits only. Its Method declares extra objectives
``objective(x_adv, y) -> per-sample loss``; each is attacked with our PGD core
(``objective=``), using the same steps / eps as the suite's white-box template, with the
*whole method* in eval mode (the objective may use modules outside ``eval_model()``).
Success is always judged on the final logits. A sample is robust only if it survives every
attack of the threat model: the worst case is the per-sample minimum over all of them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..adversarial.pgd import Objective
from ..methods._base import Method
from ..runtime import model_mode
from .base import AttackOutput, create_attack
from .gradient import PGD


class ObjectiveAttack(PGD):
    """PGD on a method's adaptive objective; the owning method is held in eval mode."""

    name = "pgd"

    def __init__(
        self, owner: nn.Module, objective: Objective, loss_name: str, **params: Any
    ) -> None:
        super().__init__(objective=objective, **params)
        self.owner = owner
        self.loss = f"adaptive:{loss_name}"
        if self.steps == 1 and not self.random_start:
            self.name = "fgsm"  # type: ignore[misc]  # one step of eps from x: FGSM on the objective

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        with model_mode(self.owner, "eval"):
            return super().perturb(model, x, y)


def adaptive_attacks(method: Method, template: dict[str, Any]) -> dict[str, ObjectiveAttack]:
    """One PGD attack per ``method.attack_losses()`` objective, configured like ``template``
    (``{"attack": "pgd" | "fgsm", **pgd options}``; FGSM = one step of eps, no random start)."""
    kind = template.get("attack", "pgd")
    params = {k: v for k, v in template.items() if k != "attack"}
    if kind == "fgsm":
        params = {
            "eps": params["eps"],
            "norm": params.get("norm", "linf"),
            "steps": 1,
            "step_size": params["eps"],
            "random_start": False,
            "early_stop": False,
        }
    else:
        create_attack(kind, **params)  # validates the template's options
    return {
        name: ObjectiveAttack(method, fn, name, **params)
        for name, fn in method.attack_losses().items()
    }


def worst_case(robust: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Per-sample minimum over attacks: ``robust`` maps attack label -> bool (N,) on the same
    samples. Returns accuracy, n, the attacks combined, and how many samples each attack alone
    broke that no other attack did (which attacks matter)."""
    labels = list(robust)
    if not labels:
        raise ValueError("worst_case needs at least one attack")
    stack = torch.stack([robust[k].bool().cpu() for k in labels])
    survives = stack.all(0)
    broken_by = ~stack
    only = {k: int((broken_by[i] & (broken_by.sum(0) == 1)).sum()) for i, k in enumerate(labels)}
    strongest = labels[int(stack.sum(1).argmin())]
    return {
        "accuracy": int(survives.sum()) / survives.numel(),
        "n": int(survives.numel()),
        "attack": " + ".join(labels),
        "strongest_single": strongest,
        "uniquely_broken": only,
    }
