"""MoEx, moment exchange (Li et al. 2021, "On Feature Normalization and Data Augmentation").

At one early layer, the features of sample i are normalized with their own positional moments
(PONO: mean and standard deviation across channels at each pixel) and given the moments of a
random partner j = perm[i]; the loss interpolates the two labels, ``lam * CE(y_i) +
(1 - lam) * CE(y_j)``. A batch is augmented with probability ``p`` (else plain CE).

Defaults are the official CIFAR facts (Boyiliee/MoEx, ``CIFAR/run.sh`` and
``pyramidnet_moex.py``): PONO, lam = 0.5, p = 0.25, after the stem (there: after the first
conv + BN), unbiased variance + eps 1e-5 inside the square root. The partner permutation and the
coin flip use the global RNG (re-seeded by the trainer each step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import check
from ..models.base import StagedModel
from ._base import Method
from ._registry import register_method


def pono_moment_exchange(h: torch.Tensor, perm: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """MoEx with PONO moments (Li et al. 2021, Eq. 2-3): ``(h_i - mu_i) / sigma_i * sigma_j + mu_j``
    with ``j = perm[i]`` and mu, sigma the mean and std across channels at each position
    (sigma^2 = unbiased variance + eps, as in the official code). Computed in float32."""
    x = h.float()
    mean = x.mean(dim=1, keepdim=True)
    centered = x - mean
    # the unbiased variance written out: torch.var over a short channel axis is ~6x slower on
    # CPU (58 vs 9 ms on a 128x16x32x32 map), and ``centered`` is needed anyway
    variance = centered.square().sum(dim=1, keepdim=True) / (x.shape[1] - 1)
    std = (variance + eps).sqrt()
    return (centered / std * std[perm] + mean[perm]).to(h.dtype)


def moex_loss(
    logits: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, lam: float
) -> torch.Tensor:
    """The interpolated target of MoEx (Eq. 4): ``lam * CE(logits, y) + (1 - lam) *
    CE(logits, y[perm])``."""
    return lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])


@register_method
class MoEx(Method):
    name = "moex"

    def __init__(
        self,
        model: StagedModel,
        node: str = "stem",
        lam: float = 0.5,
        p: float = 0.25,
        eps: float = 1e-5,
    ) -> None:
        super().__init__(model)
        self.node = model.node_names[model.resolve_node(node)]
        check(0.0 <= lam <= 1.0, f"lam must be in [0, 1], got {lam}")
        check(0.0 <= p <= 1.0, f"p must be in [0, 1], got {p}")
        check(eps > 0, f"eps must be > 0, got {eps}")
        self.lam, self.p, self.eps = float(lam), float(p), float(eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if torch.rand(()).item() >= self.p:
            logits = self.model(x)
            loss = F.cross_entropy(logits, y)
            applied = loss.new_zeros(())
            return {"loss": loss, "logits": logits, "loss_ce": loss, "moex_applied": applied}
        perm = torch.randperm(x.shape[0], device=x.device)
        h = self.model.forward_features(x, nodes=[self.node])[self.node]
        logits = self.model.run_from(self.node, pono_moment_exchange(h, perm, self.eps))
        return {
            "loss": moex_loss(logits, y, perm, self.lam),
            "logits": logits,
            "loss_ce": F.cross_entropy(logits, y),
            "moex_applied": logits.new_ones((), dtype=torch.float32),
        }
