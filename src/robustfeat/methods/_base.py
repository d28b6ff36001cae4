"""The Method contract (DESIGN.md "Method").

A Method owns the model changes and the training step. The training loop only does::

    out = method(x, y)          # {"loss": ..., "logits": ..., "<named parts>": ...}
    out["loss"].backward()
    optimizer.step(); method.after_step()

and logs every other scalar in ``out``. Every attack and metric sees ``method.eval_model()``:
a plain ``x in [0,1] -> logits`` module.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import StagedModel

# An adaptive attack objective: (x_adv in [0,1], labels) -> per-sample loss for the attacker to
# maximise; it runs whatever forward it needs (e.g. final and probe logits), in eval mode.
AttackLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Method(nn.Module, abc.ABC):
    """Base class: subclasses set ``name`` and implement ``forward``."""

    name: ClassVar[str] = ""

    def __init__(self, model: StagedModel) -> None:
        super().__init__()
        self.model = model

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training objective on a batch: at least ``loss`` and ``logits``."""

    def eval_model(self) -> nn.Module:
        """The ``x -> logits`` module every attack and metric uses (in its eval mode)."""
        return self.model

    def adversarial_objective(self, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss an adversarial-training scheme maximises to craft training examples.

        Default: cross-entropy on ``eval_model()`` logits. Methods with auxiliary heads override
        it with their training objective (CIFS: the joint beta loss over final and probe logits,
        as in its official code). It runs the forward in whatever mode the module is in: the
        scheme sets (and restores) the model / BN mode around crafting.
        """
        return F.cross_entropy(self.eval_model()(x_adv).float(), y, reduction="none")

    def attack_losses(self) -> dict[str, AttackLoss]:
        """Adaptive attack objectives beyond CE/CW on the final logits (e.g. CIFS's beta_atk sweep),
        by name; the evaluator attacks with each and reports the per-sample worst case."""
        return {}

    def compile_targets(self) -> list[nn.Module]:
        """Modules the trainer may ``torch.compile`` in place; by default the whole backbone, one
        graph for every ``self.model(x)`` call (calls of single nodes or ``run_from`` stay eager).
        Compiling node by node instead made the CE step of the cpu recipe 2x slower than eager on
        this 2-core CPU (benchmarks/trainer_overhead.py), so methods that cannot use one graph
        return nothing."""
        return [self.model]

    def param_groups(self, base: dict[str, Any]) -> list[dict[str, Any]]:
        """Optimizer parameter groups; override to give some parameters their own lr or decay
        (a group with ``"fixed_lr": True`` keeps its lr outside the trainer's schedule)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], **base}]

    def startup_warnings(self, total_steps: int, image_shape: tuple[int, ...]) -> list[str]:
        """Lines the trainer prints before training: settings under which this method cannot
        act in this run (a schedule that never starts, maps too small to carry a loss)."""
        return []

    def after_step(self) -> None:
        """Called after each optimizer step (e.g. L-ALFA's projection, schedules)."""

    def epoch_log(self) -> dict[str, Any]:
        """Values logged once per epoch (e.g. L-ALFA's eta)."""
        return {}
