"""Per-sample losses on logits that attacks, adversarial training and methods share: cross-entropy,
the CW margin and DLR, and the names the attacks know them by.

A neutral module (it imports nothing of the package but its errors): the PGD core, the attack
checks and CIFS's adaptive losses all use it, none of them owns it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .errors import ConfigError

# per-sample loss to maximise, from (logits, labels)
LogitLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def _true_and_best_other(
    logits: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return true, other


def cw_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = float("inf")) -> torch.Tensor:
    """Per-sample CW margin (Carlini & Wagner 2017, f6): ``max_{j != y} z_j - z_y``, clipped at
    ``kappa`` from above (``inf``: no clipping). Maximising it pushes the best wrong logit over
    the true one."""
    true, other = _true_and_best_other(logits.float(), y)
    margin = other - true
    return margin if kappa == float("inf") else margin.clamp(max=kappa)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample DLR loss (Croce & Hein 2020, Eq. 6): ``-(z_y - max_{j != y} z_j) /
    (z_pi1 - z_pi3)``, with ``z_pi`` the logits sorted in decreasing order. Invariant to shifting
    and scaling the logits, so a saturated or rescaled softmax cannot hide its gradient."""
    logits = logits.float()
    if logits.shape[1] < 3:
        raise ConfigError(f"the DLR loss needs >= 3 classes, got {logits.shape[1]}")
    true, other = _true_and_best_other(logits, y)
    top = logits.topk(3, dim=1).values
    return (other - true) / (top[:, 0] - top[:, 2] + 1e-12)


# "cw" uses kappa=50 like the CW-PGD evaluations of TRADES / MART / CIFS
# (their loss is relu(z_y - z_other + 50)).
LOGIT_LOSSES: dict[str, LogitLoss] = {
    "ce": ce_loss,
    "cw": lambda z, y: cw_loss(z, y, 50.0),
    "dlr": dlr_loss,
}


def resolve_loss(loss: str | LogitLoss) -> LogitLoss:
    """A named loss (``ce``, ``cw``, ``dlr``) or a callable ``(logits, y) -> per-sample loss``."""
    if callable(loss):
        return loss
    if loss not in LOGIT_LOSSES:
        raise ConfigError(
            f"unknown attack loss {loss!r}; valid: {', '.join(LOGIT_LOSSES)} or a callable"
        )
    return LOGIT_LOSSES[loss]
