"""Our own FGSM / PGD core, used both to train (adversarial-training schemes) and to evaluate.

Written here rather than taken from torchattacks because training-time examples and adaptive
attacks need things no library offers together: a pluggable per-sample objective (CW margin,
DLR, losses over auxiliary heads), an explicit and always-restored model/BN mode,
autocast-friendly gradients, restarts that keep each sample's first success, and per-sample
early stopping that also drops finished samples from the batch (faster evaluation).
All tensors are images in [0, 1]; eps is in the same pixel units.

Semantics, in one place:

- one run: start at ``x`` (or a uniform random point of the eps-ball), take ``steps`` ascent
  steps of ``step_size`` (L∞: sign of the gradient; L2: the normalised gradient), projecting
  onto the eps-ball and the [0, 1] box after every step; the result is the last iterate.
- ``early_stop``: a sample that is misclassified (targeted: classified as its target) at the
  start of a step is frozen there, so the result is the first fooling iterate. This never
  makes an attack weaker (the trajectories agree until the freeze) and skips finished samples.
- ``restarts``: runs again from fresh random starts on the samples not fooled yet; a sample
  keeps the first run that fooled it, else the last run's iterate.
- NaN / inf gradients count as zero (the step is skipped, never a NaN image); the evaluator's
  gradient checks report them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError
from ..losses import LogitLoss, resolve_loss
from ..runtime import model_mode

Norm = Literal["linf", "l2"]
NORMS = ("linf", "l2")
# per-sample loss to maximise, from (x_adv, labels): for losses over auxiliary heads
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample_shape(t: torch.Tensor) -> tuple[int, ...]:
    return (-1, *([1] * (t.ndim - 1)))


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, broadcastable against ``t`` (at least float32 precision)."""
    flat = t.flatten(1)
    if flat.dtype != torch.float64:
        flat = flat.float()
    return flat.norm(dim=1).clamp_min(1e-12).view(_per_sample_shape(t))


def project(delta: torch.Tensor, x: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """Project a perturbation onto the eps-ball of ``norm`` and keep x + delta in [0, 1]."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * torch.clamp(eps / _flat_norm(delta), max=1.0).to(delta.dtype)
    return (x + delta).clamp(0.0, 1.0) - x


def random_init(
    x: torch.Tensor, eps: float, norm: Norm, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniform start in the eps-ball (L2: uniform direction, radius eps * u^(1/d)), projected
    into the [0, 1] box."""
    device = generator.device if generator is not None else x.device
    shape = x.shape
    if norm == "linf":
        delta = (torch.rand(shape, generator=generator, device=device) * 2 - 1) * eps
    else:
        d = x[0].numel()
        direction = torch.randn(shape, generator=generator, device=device)
        radius = torch.rand(shape[0], generator=generator, device=device) ** (1.0 / d) * eps
        delta = direction / _flat_norm(direction) * radius.view(_per_sample_shape(x))
    return project(delta.to(device=x.device, dtype=x.dtype), x, eps, norm)


def _ascent_step(grad: torch.Tensor, step_size: float, norm: Norm) -> torch.Tensor:
    if norm == "linf":
        return step_size * grad.sign()
    return step_size * grad / _flat_norm(grad).to(grad.dtype)


def validate_attack(
    eps: float, steps: int, step_size: float | None, norm: str, restarts: int
) -> None:
    if norm not in NORMS:
        raise ConfigError(f"norm must be linf or l2, got {norm!r}")
    if not eps >= 0 or eps == float("inf"):
        raise ConfigError(f"eps must be finite and >= 0 (pixel units of [0,1] images), got {eps}")
    if int(steps) != steps or steps < 1 or int(restarts) != restarts or restarts < 1:
        raise ConfigError(
            f"steps and restarts must be integers >= 1, got steps={steps}, restarts={restarts}"
        )
    if step_size is not None and not (step_size > 0 and step_size != float("inf")):
        raise ConfigError(f"step_size must be finite and > 0, got {step_size}")


def default_step_size(eps: float, steps: int) -> float:
    """eps/4 for multi-step attacks (the PGD-10 training setting of Madry et al. / CIFS);
    eps for one step."""
    return eps / 4 if steps > 1 else eps


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
    """Projected gradient ascent (Madry et al. 2018) on a per-sample loss; returns x_adv (detached,
    same dtype as ``x``, in [0, 1], within ``eps`` of ``x`` in ``norm``).

    ``loss`` acts on ``model(x_adv)`` logits (``"ce"``, ``"cw"``, ``"dlr"`` or a callable);
    ``objective(x_adv, y)`` replaces it entirely (adaptive attacks over auxiliary heads; success
    is still judged on ``model``'s logits). ``targeted``: ``y`` are target labels and the loss
    is minimised. ``early_stop`` and ``restarts``: see the module docstring. ``step_size``
    defaults to ``default_step_size(eps, steps)``. ``mode``: model mode while crafting
    (``"eval"`` default, ``"train"`` for BN in train mode, ``"keep"``); every submodule's mode
    is restored afterwards. With ``mode="train"``, early stopping masks finished samples instead
    of dropping them, so BN batch statistics see the whole batch. ``generator`` draws the random
    starts (reproducible attacks).
    """
    validate_attack(eps, steps, step_size, norm, restarts)
    step_size = default_step_size(eps, steps) if step_size is None else step_size
    loss_fn = resolve_loss(loss)
    x, y = x.detach(), y.detach()
    if eps == 0 or x.shape[0] == 0:
        return x.clone()

    def fooled(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pred = logits.argmax(1)
        return pred == labels if targeted else pred != labels

    with model_mode(model, mode):
        compact = early_stop and not any(m.training for m in model.modules())
        best = x.clone()
        todo = torch.arange(x.shape[0], device=x.device)  # samples not fooled by any run yet
        for run in range(restarts):
            xs, ys = (x, y) if run == 0 else (x[todo], y[todo])
            x_adv = _run(
                model,
                xs,
                ys,
                eps=eps,
                steps=steps,
                step_size=step_size,
                norm=norm,
                loss_fn=loss_fn,
                objective=objective,
                sign=-1.0 if targeted else 1.0,
                random_start=random_start,
                early_stop=early_stop,
                compact=compact,
                fooled=fooled,
                generator=generator,
            )
            best[todo] = x_adv
            if run == restarts - 1:
                break
            with torch.no_grad():
                todo = todo[~fooled(model(x_adv), ys)]
            if todo.numel() == 0:
                break
    return best


def _run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    norm: Norm,
    loss_fn: LogitLoss,
    objective: Objective | None,
    sign: float,
    random_start: bool,
    early_stop: bool,
    compact: bool,
    fooled: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    generator: torch.Generator | None,
) -> torch.Tensor:
    """One PGD run from one start; returns x + delta."""
    delta = random_init(x, eps, norm, generator) if random_start else torch.zeros_like(x)
    moving = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    everyone = torch.arange(x.shape[0], device=x.device)
    for _ in range(steps):
        rows = moving.nonzero().squeeze(1) if compact else everyone
        d = delta[rows].requires_grad_(True)
        x_adv = x[rows] + d
        if objective is not None:
            value, logits = objective(x_adv, y[rows]), None
        else:
            logits = model(x_adv)
            value = loss_fn(logits, y[rows])
        (grad,) = torch.autograd.grad(sign * value.float().sum(), d)
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        if early_stop:
            if logits is None:
                with torch.no_grad():
                    logits = model(x_adv.detach())
            moving[rows] &= ~fooled(logits.detach(), y[rows])  # fooled samples freeze here
            if not moving.any():
                break
            keep = moving[rows]
            rows, grad = rows[keep], grad[keep]
        delta[rows] = project(delta[rows] + _ascent_step(grad, step_size, norm), x[rows], eps, norm)
    return (x + delta).clamp(0.0, 1.0)


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    loss: str | LogitLoss = "ce",
    objective: Objective | None = None,
    norm: Norm = "linf",
    targeted: bool = False,
    mode: str = "eval",
) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps from x
    (L2: the fast gradient method, one normalised-gradient step of length eps)."""
    return pgd(
        model,
        x,
        y,
        eps=eps,
        steps=1,
        step_size=eps,
        norm=norm,
        loss=loss,
        objective=objective,
        random_start=False,
        targeted=targeted,
        mode=mode,
    )
