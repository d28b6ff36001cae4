"""Dual batch normalization for AdvProp (Xie et al. 2020, "Adversarial Examples Improve Image
Recognition", Sec. 4): clean images go through the main BN, adversarial images through an
auxiliary BN with its own affine parameters and running statistics; the model used at test time
only ever uses the main BN.

``convert_dual_bn`` swaps every batch-norm layer of a model for a ``DualBatchNorm2d`` that holds
the original layer (``main``) and a copy of it (``aux``); the ``aux_bn`` context manager routes
every such layer of a model to ``aux`` for the duration of a block (e.g. crafting and training on
adversarial examples) and always restores the main route. Wrapping (rather than subclassing
``nn.BatchNorm2d``) keeps any batch-norm variant working, e.g. timm's ``BatchNormAct2d`` whose
forward also applies the activation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class DualBatchNorm2d(nn.Module):
    """A batch-norm layer with a main and an auxiliary copy; ``use_aux`` picks the route."""

    def __init__(self, main: nn.Module) -> None:
        super().__init__()
        self.main = main
        self.aux = copy.deepcopy(main)
        self.use_aux = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.aux(x) if self.use_aux else self.main(x)


def convert_dual_bn(model: nn.Module) -> int:
    """Replace every batch-norm layer in ``model`` by a ``DualBatchNorm2d`` (in place); returns
    how many were replaced. Layers already dual are left as they are."""
    count = 0
    for parent in list(model.modules()):
        if isinstance(parent, DualBatchNorm2d):
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm):
                setattr(parent, name, DualBatchNorm2d(child))
                count += 1
    return count


@contextmanager
def aux_bn(model: nn.Module) -> Iterator[nn.Module]:
    """Route every ``DualBatchNorm2d`` of ``model`` to its auxiliary BN inside the block."""
    duals = [m for m in model.modules() if isinstance(m, DualBatchNorm2d)]
    for dual in duals:
        dual.use_aux = True
    try:
        yield model
    finally:
        for dual in duals:
            dual.use_aux = False
