"""Adversarial-training schemes: a separate axis composed with any Method.

A scheme turns a clean batch into what the method trains on. The trainer calls
``for out in scheme.steps(method, x, y): backward(out["loss"]); optimizer step`` — a scheme
yields one loss dict per optimizer step (Free-AT replays a batch several times), and the
generator resumes after each step so a scheme may reuse the input gradient of that step.

Registered schemes (all L∞, images in [0, 1], eps in pixel units; ``eps`` and ``step_size``
also accept strings such as ``"8/255"``):

- ``pgd_at``  Madry et al. 2018: PGD-K from a uniform random start (K=10, step eps/4).
- ``fgsm_rs`` Wong et al. 2020 ("Fast is better than free"): uniform start, one step of 1.25 eps.
- ``trades``  Zhang et al. 2019: method loss on clean + beta * KL(f(x) || f(x_adv)).
- ``fat``     Zhang et al. 2020 (friendly AT): early-stopped PGD-K with tau.
- ``free_at`` Shafahi et al. 2019: m replays per batch, the perturbation carried over.

Model / BN mode while crafting: each scheme has a ``mode`` ("eval" or "train") set on the whole
Method around crafting and restored afterwards (``model_mode``). Defaults follow each paper's
official code: eval for PGD-AT (as in the CIFS code, whose vanilla baseline uses the same
script), TRADES and FAT; train for FGSM-RS (Wong et al. keep the model in train mode) and Free-AT
(its perturbation gradient is the training step's own). Crafting maximises
``method.adversarial_objective`` (CE on the final logits unless the method has auxiliary heads;
CIFS/CAS: their joint beta loss), except TRADES, which maximises its KL term.

The crafting loop is written here rather than calling ``pgd.pgd`` because training examples need
things the evaluation attack has no reason to offer: each paper's start distribution (uniform;
TRADES's 0.001 Gaussian), FAT's tau-counted early stop with its omega noise, Wong et al.'s step
larger than eps, and no extra forward to judge success. It uses pgd.py's primitives
(``project``, ``random_init``, ``model_mode``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .._registry import Registry
from ..errors import ConfigError, check
from ..methods._base import Method
from ..runtime import gaussian_like, model_mode
from .pgd import project, random_init

SCHEMES: Registry = Registry("adversarial-training scheme")
register_scheme = SCHEMES.register

LossDict = dict[str, torch.Tensor]
Forward = Callable[[torch.Tensor, torch.Tensor], LossDict]
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Scheme:
    """Base: the plain (no adversarial training) scheme trains on the clean batch."""

    name: ClassVar[str] = "none"
    #: optimizer steps per batch (Free-AT's m); budgets in epochs are divided by it
    replays: int = 1
    #: model / BN mode while crafting examples ("eval" or "train")
    mode: str = "train"

    def steps(
        self, method: Method, x: torch.Tensor, y: torch.Tensor, forward: Forward | None = None
    ) -> Iterator[LossDict]:
        """Loss dicts, one per optimizer step. ``forward`` is the (possibly DDP-wrapped) callable
        to compute the method's training objective with; ``method`` is the unwrapped Method
        (for ``eval_model()`` and attack losses)."""
        yield (forward or method)(x, y)


def create_scheme(name: str | None, **cfg: Any) -> Scheme:
    """The scheme ``name`` (None or "none": plain training) with options ``cfg``."""
    if name in (None, "none"):
        if cfg:
            raise ConfigError(f"options {sorted(cfg)} given without an adversarial-training scheme")
        return Scheme()
    cls = SCHEMES.get(name)
    try:
        return cls(**cfg)
    except TypeError as err:
        raise ConfigError(f"bad options for scheme {name!r}: {err}") from err


def list_schemes() -> list[str]:
    return SCHEMES.names()


# ------------------------------------------------------------------ options
def pixels(value: float | str, what: str) -> float:
    """A budget in pixel units of [0, 1] images: a number or a fraction string like ``"8/255"``."""
    if isinstance(value, str):
        try:
            value = float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError) as err:
            raise ConfigError(
                f"{what} must be a number or a fraction like 8/255, got {value!r}"
            ) from err
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a number or a fraction like 8/255, got {value!r}")
    return float(value)


def _budget(
    eps: float | str, step_size: float | str | None, default_step: float
) -> tuple[float, float]:
    eps = pixels(eps, "eps")
    check(0.0 <= eps < float("inf"), f"eps must be finite and >= 0 (pixel units), got {eps}")
    step = default_step * eps if step_size is None else pixels(step_size, "step_size")
    check(
        step > 0 or eps == 0,
        f"step_size must be > 0 (pixel units), got {step_size}",
    )
    return eps, step


def _int_at_least(value: int, low: int, what: str) -> int:
    check(
        isinstance(value, int) and not isinstance(value, bool) and value >= low,
        f"{what} must be an integer >= {low}, got {value!r}",
    )
    return value


def _mode(mode: str) -> str:
    check(mode in ("eval", "train"), f"mode must be 'eval' or 'train', got {mode!r}")
    return mode


# ------------------------------------------------------------------ crafting
def linf_ascent(
    objective: Objective,
    x: torch.Tensor,
    y: torch.Tensor,
    delta: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None,
    tau: int = 0,
    omega: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L∞ sign-gradient ascent of a per-sample ``objective`` from ``x + delta``, projecting onto
    the eps-ball and [0, 1] after every step. Returns ``(x_adv, gradient steps per sample)``.

    With ``predict`` (x -> logits): FAT's early-stopped PGD (Zhang et al. 2020, Alg. 1 and its
    official code): before each step a sample whose current iterate is misclassified stops there
    if its budget ``tau`` is used up, else spends one unit of it and keeps going, so a sample
    that stays misclassified stops exactly ``tau`` steps after it first was. Stopped samples are
    dropped from the batch (as in the official code). ``omega``: std of Gaussian noise added to
    every step (FAT's escape from local optima).
    """
    x = x.detach()
    delta = delta.detach().clone()
    taken = torch.zeros(x.shape[0], device=x.device)
    active: slice | torch.Tensor = slice(None)
    budget = torch.full((x.shape[0],), tau, device=x.device, dtype=torch.long)
    for _ in range(steps):
        if predict is not None:
            index = (
                torch.arange(x.shape[0], device=x.device) if isinstance(active, slice) else active
            )
            with torch.no_grad():
                wrong = predict(x[index] + delta[index]).argmax(1) != y[index]
            stop = wrong & (budget[index] == 0)
            budget[index[wrong & ~stop]] -= 1
            active = index[~stop]
            if active.numel() == 0:
                break
        xs, ds = x[active], delta[active].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(objective(xs + ds, y[active]).float().sum(), ds)
        step = step_size * grad.sign()
        if omega > 0:
            step = step + omega * gaussian_like(step)
        delta[active] = project(ds.detach() + step, xs, eps, "linf")
        taken[active] += 1
    return (x + delta).detach(), taken


class _Crafted(Scheme, abc.ABC):
    """Craft x_adv with the method in ``self.mode``, then train on it."""

    @abc.abstractmethod
    def craft(
        self, method: Method, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, LossDict]:
        """Adversarial examples and extra values to log."""

    def steps(
        self, method: Method, x: torch.Tensor, y: torch.Tensor, forward: Forward | None = None
    ) -> Iterator[LossDict]:
        with model_mode(method, self.mode):
            x_adv, logged = self.craft(method, x, y)
        yield {**(forward or method)(x_adv, y), **logged}


@register_scheme
class PGDAT(_Crafted):
    """PGD adversarial training (Madry et al. 2018): PGD-K on the method's adversarial objective
    from a uniform random start in the eps-ball; defaults eps 8/255, K=10, step eps/4 = 2/255
    (also the CIFS paper's setting, App. B.1). Crafted in eval mode as in the CIFS code."""

    name = "pgd_at"

    def __init__(
        self,
        eps: float | str = 8 / 255,
        steps: int = 10,
        step_size: float | str | None = None,
        random_start: bool = True,
        mode: str = "eval",
    ) -> None:
        self.eps, self.step_size = _budget(eps, step_size, 0.25)
        self.steps_k = _int_at_least(steps, 1, "steps")
        self.random_start = bool(random_start)
        self.mode = _mode(mode)

    def ascend(
        self, method: Method, x: torch.Tensor, y: torch.Tensor, **early_stop: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """PGD-K from the start; ``early_stop``: FAT's options of ``linf_ascent``."""
        start = random_init(x, self.eps, "linf") if self.random_start else torch.zeros_like(x)
        return linf_ascent(
            method.adversarial_objective,
            x,
            y,
            start,
            eps=self.eps,
            steps=self.steps_k,
            step_size=self.step_size,
            **early_stop,
        )

    def craft(
        self, method: Method, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, LossDict]:
        return self.ascend(method, x, y)[0], {}


@register_scheme
class FGSMRS(_Crafted):
    """Fast adversarial training (Wong et al. 2020): one FGSM step of ``step_size`` (default
    1.25 eps, i.e. 10/255 for eps 8/255) from a uniform random start in the eps-ball, projected
    back onto the ball and [0, 1]. Crafted in train mode, as in the paper's code. Known to suffer
    catastrophic overfitting with large steps or long schedules: watch PGD accuracy."""

    name = "fgsm_rs"

    def __init__(
        self, eps: float | str = 8 / 255, step_size: float | str | None = None, mode: str = "train"
    ) -> None:
        self.eps, self.step_size = _budget(eps, step_size, 1.25)
        self.mode = _mode(mode)

    def craft(
        self, method: Method, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, LossDict]:
        x_adv, _ = linf_ascent(
            method.adversarial_objective,
            x,
            y,
            random_init(x, self.eps, "linf"),
            eps=self.eps,
            steps=1,
            step_size=self.step_size,
        )
        return x_adv, {}


def kl_per_sample(p_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """KL(p_clean || softmax(logits_adv)) per sample, in float32 (TRADES's robust term)."""
    log_adv = F.log_softmax(logits_adv.float(), dim=1)
    return F.kl_div(log_adv, p_clean.float(), reduction="none").sum(1)


@register_scheme
class TRADES(Scheme):
    """TRADES (Zhang et al. 2019): ``loss = method loss on x + beta * KL(f(x) || f(x_adv))``
    (batch mean), f the softmax of the final logits; x_adv maximises the KL by PGD-K from
    ``x + 0.001 N(0, I)`` in eval mode (the official code's settings: K=10, step 2/255 rounded
    there to 0.007, eps 8/255, beta 6). In the loss, f(x) is the method's clean training logits
    and f(x_adv) ``eval_model()`` on x_adv in the method's training mode (not detached, as in the
    official code). Logs ``loss_natural`` and ``loss_trades_kl``; ``logits`` are the clean ones.
    Under DDP the f(x_adv) forward bypasses the DDP wrapper (a second forward per step), so
    TRADES is single-process only for now.
    """

    name = "trades"

    def __init__(
        self,
        beta: float = 6.0,
        eps: float | str = 8 / 255,
        steps: int = 10,
        step_size: float | str | None = None,
        mode: str = "eval",
    ) -> None:
        check(
            isinstance(beta, (int, float)) and 0 <= beta < float("inf"),
            f"TRADES beta must be finite and >= 0, got {beta!r}",
        )
        self.beta = float(beta)
        self.eps, self.step_size = _budget(eps, step_size, 0.25)
        self.steps_k = _int_at_least(steps, 1, "steps")
        self.mode = _mode(mode)

    def craft(self, method: Method, x: torch.Tensor) -> torch.Tensor:
        model = method.eval_model()
        with model_mode(method, self.mode):
            with torch.no_grad():
                p_clean = F.softmax(model(x).float(), dim=1)
            start = project(0.001 * gaussian_like(x), x, self.eps, "linf")
            x_adv, _ = linf_ascent(
                lambda xa, _y: kl_per_sample(p_clean, model(xa)),
                x,
                torch.zeros(x.shape[0], dtype=torch.long, device=x.device),
                start,
                eps=self.eps,
                steps=self.steps_k,
                step_size=self.step_size,
            )
        return x_adv

    def steps(
        self, method: Method, x: torch.Tensor, y: torch.Tensor, forward: Forward | None = None
    ) -> Iterator[LossDict]:
        x_adv = self.craft(method, x)
        out = (forward or method)(x, y)
        p_clean = F.softmax(out["logits"].float(), dim=1)
        kl = kl_per_sample(p_clean, method.eval_model()(x_adv)).mean()
        yield {
            **out,
            "loss": out["loss"] + self.beta * kl,
            "loss_natural": out["loss"],
            "loss_trades_kl": kl,
        }


@register_scheme
class FAT(PGDAT):
    """Friendly adversarial training (Zhang et al. 2020): train on early-stopped PGD-K examples,
    each sample stopping ``tau`` steps after it is first misclassified (see ``linf_ascent``).
    Official-code settings: eval mode, uniform random start, K=10, step 2/255 (0.007), eps 8/255,
    omega 0.001. The official script raises tau 0 -> 1 -> 2 at epochs 50 / 90 of 120; a scheme
    sees no epochs, so tau is fixed here (default 0). Misclassification is judged on the final
    logits with an extra no-grad forward per step (the objective may not expose logits). Logs
    ``fat_steps``: gradient steps per sample.
    """

    name = "fat"

    def __init__(
        self,
        tau: int = 0,
        eps: float | str = 8 / 255,
        steps: int = 10,
        step_size: float | str | None = None,
        omega: float = 0.001,
        random_start: bool = True,
        mode: str = "eval",
    ) -> None:
        super().__init__(eps, steps, step_size, random_start, mode)
        self.tau = _int_at_least(tau, 0, "tau")
        check(
            isinstance(omega, (int, float)) and 0 <= omega < float("inf"),
            f"omega must be finite and >= 0, got {omega!r}",
        )
        self.omega = float(omega)

    def craft(
        self, method: Method, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, LossDict]:
        x_adv, taken = self.ascend(
            method, x, y, predict=method.eval_model(), tau=self.tau, omega=self.omega
        )
        return x_adv, {"fat_steps": taken.mean()}


@register_scheme
class FreeAT(Scheme):
    """Free adversarial training (Shafahi et al. 2019): each batch is replayed ``replays`` (m)
    times; every replay trains on ``clip(x + delta, 0, 1)`` and then moves delta by
    ``step_size * sign(d loss / d delta)`` from that same backward pass, clipped to the eps-ball.
    delta carries over between replays and across batches (it is the scheme's state; it restarts
    at zero after a resume or when the batch shape changes). Defaults: the paper's CIFAR-10
    setting m=8, eps = step = 8/255 (TENET: m=4, eps = step = 4/255). The trainer divides the
    step budget by m, so an epoch budget costs about as much as plain training. Crafting is the
    training forward itself: mode "train".
    """

    name = "free_at"
    mode = "train"

    def __init__(
        self, eps: float | str = 8 / 255, step_size: float | str | None = None, replays: int = 8
    ) -> None:
        self.eps, self.step_size = _budget(eps, step_size, 1.0)
        self.replays = _int_at_least(replays, 1, "replays")
        self._delta: torch.Tensor | None = None

    def _carried(self, x: torch.Tensor) -> torch.Tensor:
        prev = self._delta
        if (
            prev is None
            or prev.shape[1:] != x.shape[1:]
            or prev.shape[0] < x.shape[0]
            or prev.device != x.device
        ):
            return torch.zeros_like(x, dtype=torch.float32)
        return prev[: x.shape[0]]

    def steps(
        self, method: Method, x: torch.Tensor, y: torch.Tensor, forward: Forward | None = None
    ) -> Iterator[LossDict]:
        delta = self._carried(x)
        for _ in range(self.replays):
            leaf = delta.detach().requires_grad_(True)
            yield (forward or method)((x + leaf).clamp(0.0, 1.0), y)
            if leaf.grad is not None:  # None when the trainer skipped a non-finite step
                delta = (leaf.detach() + self.step_size * leaf.grad.sign()).clamp(
                    -self.eps, self.eps
                )
            self._delta = delta.detach()
