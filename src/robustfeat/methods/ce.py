"""Cross-entropy baseline (optional label smoothing)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import check
from ..models.base import StagedModel
from ._base import Method
from ._registry import register_method


@register_method
class CE(Method):
    name = "ce"

    def __init__(self, model: StagedModel, label_smoothing: float = 0.0) -> None:
        super().__init__(model)
        check(
            0.0 <= label_smoothing < 1.0,
            f"label_smoothing must be in [0, 1), got {label_smoothing}",
        )
        self.label_smoothing = label_smoothing

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return {"loss": loss, "logits": logits, "loss_ce": loss}
