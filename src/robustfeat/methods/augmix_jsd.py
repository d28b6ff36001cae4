"""AugMix with the Jensen-Shannon consistency loss (Hendrycks et al., ICLR 2020).

Each training batch x (already cropped and flipped by the loader) gets two AugMix views made
here, per image, from a generator seeded by the global RNG (re-seeded by the trainer every
step); clean and both views go through the model in one forward of 3B images (as the reference
code, so BN sees all three), and the loss is CE on the clean logits plus λ = 12 times the JSD
among the three predictive distributions. AugMix without the JSD is a data-side augmentation
for any method: ``--set augment=augmix`` (data/augment.py). Do not combine the two: this method
makes its views from whatever the loader gives it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.augment import AugMix, generator_from_global_rng
from ..errors import check
from ..models.base import StagedModel
from ._base import Method
from ._registry import register_method


def jsd_consistency(*logits: torch.Tensor) -> torch.Tensor:
    """JS(p_1; ...; p_n) = mean_i KL(p_i || M), M = mean_i p_i, batch-averaged (Eq. of Sec. 3,
    "Jensen-Shannon divergence consistency loss", Hendrycks et al. 2020); M is clamped to
    [1e-7, 1] before its log, as in the reference code."""
    probs = [F.softmax(z.float(), dim=1) for z in logits]
    log_mixture = torch.clamp(torch.stack(probs).mean(dim=0), 1e-7, 1).log()
    return sum(F.kl_div(log_mixture, p, reduction="batchmean") for p in probs) / len(probs)


@register_method
class AugMixJSD(Method):
    """CE(clean) + ``jsd_weight`` · JSD(clean, AugMix view 1, AugMix view 2)."""

    name = "augmix_jsd"

    def __init__(
        self,
        model: StagedModel,
        jsd_weight: float = 12.0,
        severity: int = 3,
        width: int = 3,
        depth: int = -1,
        alpha: float = 1.0,
        all_ops: bool = False,
    ) -> None:
        super().__init__(model)
        check(jsd_weight >= 0, f"jsd_weight must be >= 0, got {jsd_weight}")
        self.jsd_weight = jsd_weight
        self.augmix = AugMix(severity, width, depth, alpha, all_ops)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.training:
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            return {"loss": loss, "logits": logits, "loss_ce": loss}
        generator = generator_from_global_rng()
        views = [self.augmix(x.detach(), generator) for _ in range(2)]
        batch = x.shape[0]
        clean, first, second = self.model(torch.cat([x, *views])).split(batch)
        loss_ce = F.cross_entropy(clean, y)
        loss_jsd = jsd_consistency(clean, first, second)
        loss = loss_ce + self.jsd_weight * loss_jsd
        return {"loss": loss, "logits": clean, "loss_ce": loss_ce, "loss_jsd": loss_jsd}
