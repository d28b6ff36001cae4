"""Wide ResNets (Zagoruyko & Komodakis 2016), the CIFAR WRN-d-k.

A 3x3 conv stem with 16 filters, 3 stages of n = (d-4)/6 pre-activation basic blocks with
16k/32k/64k filters at 32/16/8 pixels, dropout between the two convs of a block (the paper's
"dropout in residual blocks"), a final BN-ReLU, GAP + linear. WRN-28-10 (36.5M parameters) is the
CIFS backbone; WRN-34-10 (46.2M) the common adversarial-training one (Madry et al., TRADES).
The blocks and the final BN-ReLU placement are those of ``preact_resnet`` (see its docstring).
"""

from __future__ import annotations

from ..errors import check
from ._registry import register_model
from .preact_resnet import PreActResNet


def wide_resnet(
    num_classes: int, depth: int, widen_factor: int, dropout: float = 0.0
) -> PreActResNet:
    check(
        isinstance(depth, int) and depth >= 10 and (depth - 4) % 6 == 0,
        f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, 40, ...), got {depth!r}",
    )
    check(
        isinstance(widen_factor, int) and widen_factor >= 1,
        f"widen_factor must be a positive integer, got {widen_factor!r}",
    )
    n = (depth - 4) // 6
    widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    return PreActResNet([n] * 3, widths, num_classes, stem_width=16, dropout=dropout)


@register_model
def wrn28_10(
    num_classes: int = 10, depth: int = 28, widen_factor: int = 10, dropout: float = 0.0
) -> PreActResNet:
    """WRN-28-10 (depth and width overridable, e.g. ``depth=16, widen_factor=4``)."""
    return wide_resnet(num_classes, depth, widen_factor, dropout)


@register_model
def wrn34_10(
    num_classes: int = 10, depth: int = 34, widen_factor: int = 10, dropout: float = 0.0
) -> PreActResNet:
    """WRN-34-10, the adversarial-training backbone of Madry et al. and TRADES."""
    return wide_resnet(num_classes, depth, widen_factor, dropout)
