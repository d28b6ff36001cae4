"""AutoAttack and its parts (APGD-CE, APGD-T, FAB-T, Square), wrapped from torchattacks.

Parameter-free attacks whose reference implementations are long and subtle are taken from a
maintained library rather than rewritten. What the wrappers add (torchattacks 3.5 facts, read
from its source):

- torchattacks switches the model to eval itself and afterwards calls ``model.train()`` on the
  whole model if it was training, which would flip nested modules' own modes; we run every call
  inside ``model_mode(model, "eval")``, which restores each submodule's mode.
- its attacks call ``torch.random.manual_seed(seed)`` on the *global* RNG; we fork the RNG so
  an evaluation never changes the caller's random stream.
- it reads the device from the model's parameters and expects float inputs in [0, 1] (our
  models normalise inside, so no ``set_normalization_used``); we move x / y to that device as
  float32 (a model of another float type is seen through a casting view: torchattacks builds
  float32 buffers internally), and the result back to the caller's device and type.
- ``torchattacks.AutoAttack(version="standard")`` builds APGD / APGD-T / FAB with torchattacks'
  default 10 iterations and n_classes - 1 target classes, while the reference AutoAttack
  "standard" (Croce & Hein 2020, RobustBench) uses 100 iterations, 9 target classes, Square with
  5000 queries, p_init 0.8 and no rescaled schedule. ``autoattack`` below therefore composes the
  torchattacks parts with the reference settings in the reference order, and records the robust
  accuracy after each stage (as the reference implementation logs it).
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError
from ..runtime import model_mode
from .base import Attack, AttackOutput, register_attack

# reference "standard" settings (fra31/auto-attack, version="standard", Linf / L2)
AA_STEPS = 100
AA_TARGETS = 9
SQUARE_QUERIES = 5000
SQUARE_P_INIT = 0.8


def _torchattacks() -> Any:
    """The torchattacks module, imported on first use: it pulls in scipy (about as long to import
    as torch), which ``import robustfeat`` and ``robustfeat list`` do not need."""
    import torchattacks

    return torchattacks


class Float32View(nn.Module):
    """Shows torchattacks (which builds float32 buffers internally) a float32 interface to a
    model of another float type: casts inputs to the model's type and logits back."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def _float32_model(model: nn.Module) -> tuple[nn.Module, torch.device]:
    param = next(model.parameters(), None)
    if param is None:
        raise ConfigError("torchattacks attacks need a model with parameters (to find its device)")
    if param.dtype != torch.float32 and param.dtype.is_floating_point:
        return Float32View(model, param.dtype), param.device
    return model, param.device


def _num_classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


class TorchattacksAttack(Attack):
    """Runs one torchattacks attack with our mode / RNG / device discipline."""

    ta_norm: ClassVar[dict[str, str]] = {"linf": "Linf", "l2": "L2"}
    ta_class: ClassVar[str]  # the torchattacks class this attack configures
    restarts: int = 1  # the reference runs every part but APGD-CE with one restart

    @abc.abstractmethod
    def ta_options(self, num_classes: int) -> dict[str, Any]:
        """This attack's own torchattacks options, beyond those every part shares."""

    def build(self, model: nn.Module, num_classes: int) -> Any:
        """The configured torchattacks object for ``model``."""
        return getattr(_torchattacks(), self.ta_class)(
            model,
            norm=self.ta_norm[self.norm],
            eps=self.eps,
            n_restarts=self.restarts,
            seed=self.seed,
            **self.ta_options(num_classes),
        )

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        model, device = _float32_model(model)
        xd, yd = x.detach().to(device=device, dtype=torch.float32), y.to(device)
        devices = [device] if device.type == "cuda" else []
        with model_mode(model, "eval"), torch.random.fork_rng(devices=devices):
            attack = self.build(model, _num_classes(model, xd))
            attack.set_device(device)
            x_adv = attack(xd, yd)
        return AttackOutput(x_adv.detach().to(device=x.device, dtype=x.dtype))


@register_attack(name="apgd_ce")
class APGDCE(TorchattacksAttack):
    """APGD on cross-entropy (Croce & Hein 2020)."""

    name = "apgd_ce"
    loss = "ce"
    ta_class = "APGD"

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: str = "linf",
        steps: int = AA_STEPS,
        restarts: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(eps, norm, seed)
        self.steps, self.restarts = int(steps), int(restarts)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "restarts": self.restarts}

    def ta_options(self, num_classes: int) -> dict[str, Any]:
        return {"steps": self.steps, "loss": "ce"}


class MultiTargeted(TorchattacksAttack):
    """An attack run once per target class, the ``targets`` highest-scoring wrong classes."""

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: str = "linf",
        steps: int = AA_STEPS,
        targets: int = AA_TARGETS,
        seed: int = 0,
    ) -> None:
        super().__init__(eps, norm, seed)
        self.steps, self.targets = int(steps), int(targets)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "targets": self.targets}

    def ta_options(self, num_classes: int) -> dict[str, Any]:
        # torchattacks' ``n_classes``: it attacks ``n_classes - 1`` target classes
        return {"steps": self.steps, "n_classes": min(self.targets, num_classes - 1) + 1}


@register_attack(name="apgd_t")
class APGDT(MultiTargeted):
    """Targeted APGD on the targeted DLR loss (Croce & Hein 2020)."""

    name = "apgd_t"
    loss = "dlr_targeted"
    ta_class = "APGDT"

    def ta_options(self, num_classes: int) -> dict[str, Any]:
        if num_classes < 4:
            raise ConfigError(
                f"APGD-T's targeted DLR loss needs >= 4 classes, the model has {num_classes}"
            )
        return super().ta_options(num_classes)


@register_attack(name="fab_t")
class FABT(MultiTargeted):
    """Targeted FAB (Croce & Hein 2020)."""

    name = "fab_t"
    loss = "fab"
    ta_class = "FAB"

    def ta_options(self, num_classes: int) -> dict[str, Any]:
        return {**super().ta_options(num_classes), "multi_targeted": True}


@register_attack(name="square")
class Square(TorchattacksAttack):
    """Square Attack (Andriushchenko et al. 2020): black-box random search on the margin loss."""

    name = "square"
    loss = "margin"
    ta_class = "Square"

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: str = "linf",
        queries: int = SQUARE_QUERIES,
        p_init: float = SQUARE_P_INIT,
        seed: int = 0,
    ) -> None:
        super().__init__(eps, norm, seed)
        self.queries, self.p_init = int(queries), float(p_init)
        self.steps = self.queries

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "queries": self.queries, "p_init": self.p_init}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        try:
            return super().perturb(model, x, y)
        except RuntimeError as err:
            if self.norm != "l2":
                raise
            # torchattacks 3.5.1's L2 initialisation fails on some sizes (e.g. 12, 14, 24 px)
            raise ConfigError(
                f"torchattacks' L2 Square Attack cannot handle {tuple(x.shape[-2:])} images "
                f"({err}); use the L∞ version or another image size"
            ) from err

    def ta_options(self, num_classes: int) -> dict[str, Any]:
        return {
            "n_queries": self.queries,
            "p_init": self.p_init,
            "loss": "margin",
            "resc_schedule": False,
        }


@register_attack(name="autoattack")
class AutoAttack(Attack):
    """AutoAttack, reference "standard" version: APGD-CE, APGD-T, FAB-T, Square in cascade; a
    sample counts as robust only if it survives all four. Models with < 4 classes skip APGD-T
    (its loss needs 4 logits), as the reference implementation refuses it."""

    name = "autoattack"
    loss = "ensemble"

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: str = "linf",
        steps: int = AA_STEPS,
        targets: int = AA_TARGETS,
        queries: int = SQUARE_QUERIES,
        seed: int = 0,
    ) -> None:
        super().__init__(eps, norm, seed)
        self.steps, self.targets, self.queries = int(steps), int(targets), int(queries)
        self.parts: dict[str, Attack] = {
            "apgd_ce": APGDCE(eps, norm, steps, 1, seed),
            "apgd_t": APGDT(eps, norm, steps, targets, seed),
            "fab_t": FABT(eps, norm, steps, targets, seed),
            "square": Square(eps, norm, queries, SQUARE_P_INIT, seed),
        }

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "version": "standard",
            "targets": self.targets,
            "queries": self.queries,
            "parts": list(self.parts),
        }

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        x_adv = x.detach().clone()
        with torch.no_grad(), model_mode(model, "eval"):
            robust = model(x).argmax(1) == y
            num_classes = _num_classes(model, x)
        stages: dict[str, torch.Tensor] = {}
        for label, part in self.parts.items():
            if label == "apgd_t" and num_classes < 4:
                continue
            idx = robust.nonzero().squeeze(1)
            if idx.numel():
                adv = part.run(model, x[idx], y[idx]).x_adv
                with torch.no_grad(), model_mode(model, "eval"):
                    broken = model(adv).argmax(1) != y[idx]
                x_adv[idx[broken]] = adv[broken]
                robust[idx[broken]] = False
            stages[label] = robust.clone()
        return AttackOutput(x_adv, stages)
