"""White-box attacks on our own PGD core: ``fgsm``, ``pgd`` (L∞/L2, any loss or objective), ``cw``.

``cw`` is the "C&W" of the robustness papers (CIFS, TRADES, MART): PGD on the CW margin loss,
30 steps of eps/10 -- not the original optimisation-based Carlini-Wagner L2 attack.
Evaluation defaults: random start and early stopping at the first fooling iterate (never
weaker than the last iterate; see ``robustfeat.adversarial.pgd``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..adversarial.pgd import Objective, default_step_size, fgsm, pgd, validate_attack
from .base import Attack, AttackOutput, register_attack


@register_attack(name="fgsm")
class FGSM(Attack):
    name = "fgsm"
    steps = 1

    def __init__(
        self, eps: float = 8 / 255, norm: str = "linf", loss: str = "ce", seed: int = 0
    ) -> None:
        super().__init__(eps, norm, seed)
        self.loss = loss
        self.step_size = self.eps

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        return AttackOutput(fgsm(model, x, y, eps=self.eps, norm=self.norm, loss=self.loss))


@register_attack(name="pgd")
class PGD(Attack):
    name = "pgd"

    def __init__(
        self,
        eps: float = 8 / 255,
        steps: int = 20,
        step_size: float | None = None,
        norm: str = "linf",
        loss: str = "ce",
        restarts: int = 1,
        random_start: bool = True,
        early_stop: bool = True,
        objective: Objective | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(eps, norm, seed)
        validate_attack(self.eps, steps, step_size, norm, restarts)
        self.steps = int(steps)
        self.step_size = (
            default_step_size(self.eps, self.steps) if step_size is None else float(step_size)
        )
        self.loss = loss if objective is None else "objective"
        self.restarts = int(restarts)
        self.random_start = random_start
        self.early_stop = early_stop
        self.objective = objective
        self._generator: torch.Generator | None = None

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "restarts": self.restarts,
            "random_start": self.random_start,
            "early_stop": self.early_stop,
        }

    def generator(self) -> torch.Generator:
        """Random starts: one CPU stream per attack object, seeded once (reproducible runs)."""
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        return self._generator

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        x_adv = pgd(
            model,
            x,
            y,
            eps=self.eps,
            steps=self.steps,
            step_size=self.step_size,
            norm=self.norm,
            loss="ce" if self.objective is not None else self.loss,
            objective=self.objective,
            random_start=self.random_start,
            restarts=self.restarts,
            early_stop=self.early_stop,
            generator=self.generator(),
        )
        return AttackOutput(x_adv)


@register_attack(name="cw")
class CW(PGD):
    """PGD on the CW margin loss (kappa=50), 30 steps of eps/10 by default."""

    name = "cw"

    def __init__(
        self,
        eps: float = 8 / 255,
        steps: int = 30,
        step_size: float | None = None,
        norm: str = "linf",
        restarts: int = 1,
        random_start: bool = True,
        early_stop: bool = True,
        seed: int = 0,
    ) -> None:
        if step_size is None and eps > 0:
            step_size = eps / 10
        super().__init__(
            eps, steps, step_size, norm, "cw", restarts, random_start, early_stop, None, seed
        )
