"""``FeatureSlot``: a wrapper that adds a perturbation to a layer's output (ALFA per-layer sites).

Perturbing a feature *inside* a residual block (after one of its normalization layers) changes
the forward, so it is a module, not a forward hook ("hooks read, wrappers change"). The slot is
the identity around its layer until a perturbation is set; with ``record`` on it keeps a detached
reference to its clean output (the shape and dtype the perturbation must have).
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureSlot(nn.Module):
    """``inner(x) + delta`` when ``delta`` is set, else ``inner(x)``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.delta: torch.Tensor | None = None
        self.record = False
        self.recorded: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if self.record:
            self.recorded = out.detach()
        if self.delta is not None:
            out = out + self.delta
        return out
