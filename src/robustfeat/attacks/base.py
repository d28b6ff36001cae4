"""The evaluation-attack interface and registry.

Every attack is an object ``attack(model, x, y) -> x_adv`` (``x`` images in [0, 1], eps in the
same pixel units) with a uniform description (``describe()``: name, norm, eps, steps,
step_size, loss, ...) that the evaluator records. ``run()`` also returns per-stage robustness
masks for composite attacks (AutoAttack's APGD-CE -> APGD-T -> FAB-T -> Square cascade).
Attacks always leave the model's (and every submodule's) train/eval mode as they found it.
"""

from __future__ import annotations

import abc
import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from .._registry import Registry
from ..adversarial.pgd import NORMS, project
from ..errors import ConfigError

ATTACKS: Registry = Registry("attack")
register_attack = ATTACKS.register


@dataclass
class AttackOutput:
    x_adv: torch.Tensor
    # composite attacks: stage label -> bool (N,) "still robust after this stage" (cumulative)
    stages: dict[str, torch.Tensor] = field(default_factory=dict)


class Attack(abc.ABC):
    """Base class: subclasses set ``name`` and implement ``perturb``."""

    name: ClassVar[str] = ""

    def __init__(self, eps: float, norm: str = "linf", seed: int = 0) -> None:
        if norm not in NORMS:
            raise ConfigError(f"attack norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if not (isinstance(eps, (int, float)) and 0 <= eps < float("inf")):
            raise ConfigError(f"attack eps must be a finite number >= 0 (pixel units), got {eps!r}")
        self.eps = float(eps)
        self.norm = norm
        self.seed = int(seed)

    # what the evaluator records about the attack (subclasses add their own keys)
    steps: int | None = None
    step_size: float | None = None
    loss: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "norm": self.norm,
            "eps": self.eps,
            "steps": self.steps,
            "step_size": self.step_size,
            "loss": self.loss,
        }

    @abc.abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        """The attack proper; ``run`` / ``__call__`` wrap it."""

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        """Perturb, then enforce the threat model (ball and box) on whatever the attack returned,
        so a library bug can never inflate an attack's success."""
        if self.eps == 0 or x.shape[0] == 0:
            return AttackOutput(x.detach().clone())
        with input_gradients_only(model):
            out = self.perturb(model, x, y)
        out.x_adv = (x + project(out.x_adv.to(x.dtype) - x, x, self.eps, self.norm)).clamp(0, 1)
        return out

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.run(model, x, y).x_adv

    def __repr__(self) -> str:
        params = ", ".join(
            f"{k}={v}" for k, v in self.describe().items() if k != "name" and v is not None
        )
        return f"{type(self).__name__}({params})"


@contextlib.contextmanager
def input_gradients_only(model: nn.Module) -> Iterator[None]:
    """While an attack runs, parameters do not require gradients (an attack needs only input
    gradients: cheaper) and their ``.grad`` is restored after, so no attack, torchattacks' FAB
    included, leaves gradients behind in a model that is being trained."""
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    for p, _, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, requires_grad, grad in saved:
            p.requires_grad_(requires_grad)
            p.grad = grad


def create_attack(name: str, **params: Any) -> Attack:
    """The registered attack ``name`` with its options; unknown options list the valid ones."""
    cls = ATTACKS.get(name)
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for attack {name!r}; valid: {valid}")
    return cls(**params)


def list_attacks() -> list[str]:
    return ATTACKS.names()
