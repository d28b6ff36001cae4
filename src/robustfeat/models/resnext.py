"""CIFAR ResNeXt-29 (Xie et al. 2017, "Aggregated Residual Transformations", Sec. 5.3).

The layout follows the CIFAR ResNeXt that AugMix ships and TENET trains on (facts read from the
AugMix repository's ``third_party/ResNeXt_DenseNet/models/resnext.py``): a 3x3 conv-BN-ReLU stem
with 64 filters; 3 stages of (depth-2)/9 bottleneck blocks (3 for depth 29) with ``planes`` =
64/128/256 and output ``planes * widen_factor`` = 256/512/1024 at 32/16/8 pixels; each block is
1x1 reduce -> 3x3 grouped conv (``cardinality`` groups, stride 2 in the first block of stages 2-3)
-> 1x1 expand, each followed by BN, ReLU after the first two and after the residual sum; the
shortcut is a 1x1 conv + BN when the shape changes; GAP + linear. The bottleneck width is
``cardinality * floor(planes * base_width / 64)``.

The default (cardinality 4, base width 32, widen factor 4) is AugMix's ``resnext29`` and TENET's
CIFAR backbone: 6.81M parameters for 10 classes. HNC's ResNeXt-29 8x64d / 16x64d are
``cardinality=8|16, base_width=64``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import check
from ._layers import conv_bn, kaiming_init, make_stages
from ._registry import register_model
from .base import StagedModel


class ResNeXtBottleneck(nn.Module):
    """1x1 reduce, 3x3 grouped conv, 1x1 expand (each + BN), shortcut, ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int, stride: int, inner: int, cardinality: int) -> None:
        super().__init__()
        self.reduce = conv_bn(c_in, inner, kernel=1)
        self.grouped = conv_bn(inner, inner, stride, kernel=3, groups=cardinality)
        self.expand = conv_bn(inner, c_out, kernel=1)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = conv_bn(c_in, c_out, stride, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.reduce(x))
        out = F.relu(self.grouped(out))
        return F.relu(self.expand(out) + self.shortcut(x))


class CifarResNeXt(StagedModel):
    def __init__(
        self,
        num_classes: int,
        depth: int = 29,
        cardinality: int = 4,
        base_width: int = 32,
        widen_factor: int = 4,
        width: int = 64,
    ) -> None:
        super().__init__()
        check(
            isinstance(depth, int) and depth >= 11 and (depth - 2) % 9 == 0,
            f"ResNeXt depth must be 9n+2 with n >= 1 (11, 20, 29, 38, ...), got {depth!r}",
        )
        for key, value in [
            ("cardinality", cardinality),
            ("base_width", base_width),
            ("widen_factor", widen_factor),
            ("width", width),
        ]:
            check(isinstance(value, int) and value >= 1, f"{key} must be a positive int: {value!r}")
        planes = [width, 2 * width, 4 * width]
        inner = {p * widen_factor: cardinality * (p * base_width // 64) for p in planes}
        check(
            min(inner.values()) >= cardinality,
            f"width * base_width / 64 = {width * base_width / 64} is below 1 channel per group",
        )
        self.stem = nn.Sequential(conv_bn(3, width), nn.ReLU(inplace=True))
        self.stages = make_stages(
            lambda c_in, c_out, stride: ResNeXtBottleneck(
                c_in, c_out, stride, inner[c_out], cardinality
            ),
            [(depth - 2) // 9] * 3,
            list(inner),
            c_in=width,
        )
        self.fc = nn.Linear(planes[-1] * widen_factor, num_classes)
        kaiming_init(self)


@register_model
def resnext29(
    num_classes: int = 10,
    cardinality: int = 4,
    base_width: int = 32,
    widen_factor: int = 4,
    width: int = 64,
    depth: int = 29,
) -> CifarResNeXt:
    """ResNeXt-29 (4x32d, widen factor 4) of AugMix/TENET; ``width`` is the stem's filters (64)."""
    return CifarResNeXt(num_classes, depth, cardinality, base_width, widen_factor, width)
