"""AdvProp (Xie et al. 2020, "Adversarial Examples Improve Image Recognition").

Every batch-norm layer becomes a ``DualBatchNorm2d`` (``nn/dual_bn.py``): clean images use the
main BN, adversarial images the auxiliary BN. Each step crafts PGD examples with the auxiliary BN
and the model in train mode (as in AdvProp), then minimises ``CE(clean; main BN) +
adv_weight * CE(x_adv; aux BN)`` (Eq. 3 of the paper: the two losses summed). ``eval_model()`` is
the model with every dual BN on its main route: attacks and evaluation never use the auxiliary BN.

Attacker defaults: AdvProp attacks with L∞ PGD of perturbation size 1 to 4 (of 255) and step
size 1, and finds weaker attackers better for smaller networks; we take its weakest one for
ResNet-20: eps = 1/255, one step of 1/255, with a random start (``random_start``) as
``adversarial.pgd.pgd`` does by default. (The paper's exact iteration count per eps could not be
checked here; ALFA's Table 6 timing, 5.3x CE for AdvProp, suggests a few steps: set ``steps``.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..adversarial.pgd import pgd
from ..errors import check
from ..models.base import StagedModel
from ..nn.dual_bn import aux_bn, convert_dual_bn
from ._base import Method
from ._registry import register_method


@register_method
class AdvProp(Method):
    name = "advprop"

    def __init__(
        self,
        model: StagedModel,
        eps: float = 1.0 / 255,
        steps: int = 1,
        step_size: float | None = 1.0 / 255,
        random_start: bool = True,
        adv_weight: float = 1.0,
    ) -> None:
        super().__init__(model)
        check(eps > 0, f"eps must be > 0 (pixel units of [0,1] images), got {eps}")
        check(isinstance(steps, int) and steps >= 1, f"steps must be an int >= 1, got {steps!r}")
        check(step_size is None or step_size > 0, f"step_size must be > 0 or None: {step_size}")
        check(adv_weight >= 0, f"adv_weight must be >= 0, got {adv_weight}")
        check(convert_dual_bn(model) > 0, "AdvProp needs a model with batch-norm layers")
        self.eps, self.steps, self.step_size = float(eps), steps, step_size
        self.random_start = bool(random_start)
        self.adv_weight = float(adv_weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        with aux_bn(self.model):
            x_adv = pgd(
                self.model,
                x,
                y,
                eps=self.eps,
                steps=self.steps,
                step_size=self.step_size,
                random_start=self.random_start,
                mode="train",
            )
            loss_adv = F.cross_entropy(self.model(x_adv), y)
        logits = self.model(x)
        loss_clean = F.cross_entropy(logits, y)
        return {
            "loss": loss_clean + self.adv_weight * loss_adv,
            "logits": logits,
            "loss_ce": loss_clean,
            "loss_adv": loss_adv,
        }
