"""Gaussian feature noise: the random-perturbation baseline of ALFA's Table 7.

"For each training iteration, a new random noise sampled from a Gaussian distribution
N(0, (1.0/255)^2) is applied to the same feature embeddings" as ALFA perturbs: here the same sites
(default the last block's output) and the same loss composition as ALFA (clean CE plus the CE at
the noisy features, ``lam`` / ``normalize`` / ``detach_prefix`` as in ``methods/alfa.py``), with
the PGD perturbation replaced by fresh noise drawn from the global RNG (re-seeded by the trainer
each step, so runs are reproducible).
"""

from __future__ import annotations

import torch

from ..errors import check
from ..models.base import StagedModel
from ..runtime import gaussian_like
from ._registry import register_method
from .alfa import FeaturePerturbation, Site


@register_method
class FeatureNoise(FeaturePerturbation):
    name = "feature_noise"

    def __init__(
        self,
        model: StagedModel,
        nodes: str | list[str] | None = None,
        granularity: str | None = None,
        sigma: float = 1.0 / 255,
        lam: float = 1.0,
        normalize: bool = True,
        detach_prefix: bool = True,
    ) -> None:
        super().__init__(model, nodes, granularity, lam, normalize, detach_prefix)
        check(sigma > 0, f"sigma must be > 0 (feature units, e.g. 1/255), got {sigma}")
        self.sigma = float(sigma)

    def _perturbation(
        self, site: Site, start: torch.Tensor, clean: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """N(0, sigma^2) noise, one independent draw per feature element."""
        return self.sigma * gaussian_like(clean, torch.float32)
