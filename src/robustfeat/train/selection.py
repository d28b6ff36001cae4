"""Best-epoch selection (``select_best``).

After every epoch the validation split is scored (clean accuracy, or PGD-10 robust accuracy at
8/255 -- the early-stopping rule of Rice et al. 2020 that AT papers, CIFS among them, report as
"best" -- alone or with the method's adaptive attacks); a validation split rather than the test
set, so that picking the epoch does not peek at the numbers it reports. The scores go to
metrics.jsonl; when the best epoch is not the last, its weights are evaluated with the same
suite, without AutoAttack (the slowest part; CIFS's best-epoch Table B.2 has none), into
``results["best_epoch"]["evaluation"]`` (``Trainer.evaluate_best`` in ``loop.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..attacks.adaptive import adaptive_attacks
from ..attacks.base import create_attack
from ..data.base import ImageDataset
from ..evaluate import Progress, clean_accuracy, fraction, run_attack
from ..methods import Method

SELECTION_PGD = {"eps": 8 / 255, "steps": 10, "step_size": 2 / 255, "seed": 0}


def selection_score(method: Method, val: ImageDataset, criterion: str) -> float:
    """The validation score of ``select_best``: clean accuracy; ``pgd10``, PGD-10 robust accuracy
    (L-inf 8/255, step 2/255, random start, fixed seed: every epoch faces the same attack) on the
    final logits; or ``pgd10_adaptive``, the per-sample worst case of that attack and the same
    PGD-10 on each of the method's ``attack_losses()`` (1 + len(attack_losses) times the cost).
    The adaptive score is the honest one for defences that mask the final-logit gradient: CAS's
    validation PGD-10 climbed .34 -> .67 over the cpu FGSM-RS run while the last epoch's test
    accuracy under adaptive PGD-20 was .31, so ``pgd10`` picks the most masked epoch."""
    model = method.eval_model()
    # eager: the eval-mode shapes would otherwise recompile the training graph
    with torch.compiler.set_stance("force_eager"):
        if criterion == "clean":
            return clean_accuracy(model, val)
        attacks: dict[str, Any] = {"pgd": create_attack("pgd", **SELECTION_PGD)}
        if criterion == "pgd10_adaptive":
            attacks.update(adaptive_attacks(method, {"attack": "pgd", **SELECTION_PGD}))
        survives = torch.ones(len(val), dtype=torch.bool)
        for label, attack in attacks.items():
            record = run_attack(model, attack, val, 250, (1,), Progress(False), label)
            survives &= record.correct["1"]
    return fraction(survives)


@dataclass
class BestEpoch:
    """The running best of ``select_best`` (kept in state.json, so a resume continues it)."""

    epoch: int = 0
    score: float = -1.0
    scores: list[float] = field(default_factory=list)  # one per finished epoch

    def update(self, score: float) -> bool:
        """Record the score of the epoch just finished; whether it is the new best."""
        self.scores.append(score)
        if score > self.score:  # ties keep the earlier epoch
            self.epoch, self.score = len(self.scores), score
            return True
        return False
