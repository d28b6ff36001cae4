"""Our own FGSM / PGD core, used both to train (adversarial-training schemes) and to evaluate.

Written here rather than taken from torchattacks because training-time examples and adaptive
attacks need things no library offers together: a pluggable per-sample objective (CW margin,
losses over auxiliary heads), an explicit and always-restored model/BN mode, autocast-friendly
gradients, restarts that keep each sample's first success, and per-sample early stopping.
All tensors are images in [0, 1]; eps is in the same pixel units.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

Norm = Literal["linf", "l2"]
# per-sample loss to maximise, from (logits, labels)
LogitLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# per-sample loss to maximise, from (x_adv, labels): for losses over auxiliary heads
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextmanager
def model_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Put ``model`` in ``"eval"`` or ``"train"`` mode (``"keep"``: unchanged) and restore every
    submodule's own mode afterwards, even on error."""
    if mode not in ("eval", "train", "keep"):
        raise ConfigError(f"model mode must be eval, train or keep, got {mode!r}")
    saved = [(m, m.training) for m in model.modules()]
    if mode != "keep":
        model.train(mode == "train")
    try:
        yield model
    finally:
        for module, training in saved:
            module.training = training


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def cw_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 0.0) -> torch.Tensor:
    """Per-sample CW margin (Carlini & Wagner 2017, f6): max_{j != y} z_j - z_y, clipped at kappa
    from above (kappa=inf: no clipping). Maximising it pushes the best wrong logit over the true one."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return torch.clamp(other - true, max=kappa) if kappa != float("inf") else other - true


LOGIT_LOSSES: dict[str, LogitLoss] = {"ce": ce_loss, "cw": lambda z, y: cw_loss(z, y, 50.0)}


def _resolve_loss(loss: str | LogitLoss) -> LogitLoss:
    if callable(loss):
        return loss
    if loss not in LOGIT_LOSSES:
        raise ConfigError(
            f"unknown attack loss {loss!r}; valid: {', '.join(LOGIT_LOSSES)} or a callable"
        )
    return LOGIT_LOSSES[loss]


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.ndim - 1)))


def project(delta: torch.Tensor, x: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """Project a perturbation onto the eps-ball of ``norm`` and keep x + delta in [0, 1]."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * torch.clamp(eps / _flat_norm(delta), max=1.0)
    return (x + delta).clamp(0.0, 1.0) - x


def random_init(
    x: torch.Tensor, eps: float, norm: Norm, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniform start in the eps-ball (L2: uniform direction, radius eps * u^(1/d))."""
    if norm == "linf":
        delta = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
    else:
        d = x[0].numel()
        delta = torch.randn(x.shape, generator=generator, device=x.device)
        radius = torch.rand(x.shape[0], generator=generator, device=x.device) ** (1.0 / d) * eps
        delta = delta / _flat_norm(delta) * radius.view(-1, *([1] * (x.ndim - 1)))
    return project(delta, x, eps, norm)


def _ascent_step(grad: torch.Tensor, step_size: float, norm: Norm) -> torch.Tensor:
    if norm == "linf":
        return step_size * grad.sign()
    return step_size * grad / _flat_norm(grad)


def validate_attack(
    eps: float, steps: int, step_size: float | None, norm: str, restarts: int
) -> None:
    if norm not in ("linf", "l2"):
        raise ConfigError(f"norm must be linf or l2, got {norm!r}")
    if not eps >= 0:
        raise ConfigError(f"eps must be >= 0 (pixel units of [0,1] images), got {eps}")
    if steps < 1 or restarts < 1:
        raise ConfigError(
            f"steps and restarts must be >= 1, got steps={steps}, restarts={restarts}"
        )
    if step_size is not None and not step_size > 0:
        raise ConfigError(f"step_size must be > 0, got {step_size}")


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    norm: Norm = "linf",
    loss: str | LogitLoss = "ce",
    objective: Objective | None = None,
    random_start: bool = True,
    restarts: int = 1,
    early_stop: bool = False,
    targeted: bool = False,
    mode: str = "eval",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient ascent (Madry et al. 2018) on a per-sample loss; returns x_adv (detached).

    ``loss`` acts on ``model(x_adv)`` logits; ``objective(x_adv, y)`` replaces it entirely (adaptive
    attacks over auxiliary heads). ``targeted``: ``y`` are target labels and the loss is minimised.
    ``early_stop``: a sample stops moving once misclassified (correct, for targeted: hits target).
    With ``restarts > 1`` each sample keeps the first restart that fools the model (else the last).
    ``mode``: model mode while crafting ("eval" default, "train" for BN in train mode, "keep").
    """
    validate_attack(eps, steps, step_size, norm, restarts)
    if step_size is None:
        step_size = eps / 4 if steps > 1 else eps
    loss_fn = _resolve_loss(loss)
    x = x.detach()
    if eps == 0:
        return x.clone()
    sign = -1.0 if targeted else 1.0

    def fooled(logits: torch.Tensor) -> torch.Tensor:
        pred = logits.argmax(1)
        return pred == y if targeted else pred != y

    with model_mode(model, mode):
        best = x.clone()
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(restarts):
            delta = random_init(x, eps, norm, generator) if random_start else torch.zeros_like(x)
            active = torch.ones_like(done)
            for _ in range(steps):
                delta.requires_grad_(True)
                x_adv = x + delta
                if objective is not None:
                    per_sample = objective(x_adv, y)
                    logits = None
                else:
                    logits = model(x_adv)
                    per_sample = loss_fn(logits, y)
                (grad,) = torch.autograd.grad(sign * per_sample.float().sum(), delta)
                delta = delta.detach()
                if early_stop and logits is not None:
                    active &= ~fooled(logits.detach())
                    if not active.any():
                        break
                step = _ascent_step(grad, step_size, norm)
                if early_stop:
                    step = step * active.view(-1, *([1] * (x.ndim - 1)))
                delta = project(delta + step, x, eps, norm)
            x_adv = (x + delta).detach()
            with torch.no_grad():
                success = fooled(model(x_adv))
            take = ~done  # samples not yet fooled take this restart's result
            best[take] = x_adv[take]
            done |= success
            if done.all():
                break
    return best


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    loss: str | LogitLoss = "ce",
    objective: Objective | None = None,
    mode: str = "eval",
) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps from x."""
    return pgd(
        model,
        x,
        y,
        eps=eps,
        steps=1,
        step_size=eps,
        loss=loss,
        objective=objective,
        random_start=False,
        mode=mode,
    )
