"""Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks").

``preact_resnet18`` is the CIFAR PreAct ResNet-18 used by Top-GAP and fast adversarial-training
work (Wong et al. 2020): a plain 3x3 conv stem with 64 filters, 4 stages of 2 pre-activation basic
blocks (64/128/256/512 filters; the first stage keeps 32x32, each later stage halves), 1x1 conv
projection shortcuts, GAP + linear; 11.17M parameters for 10 classes.

Pre-activation blocks end on a bare addition, so the net needs a final BN-ReLU before pooling.
It is the extra last node of the last stage (e.g. ``stage4.2`` for PreAct ResNet-18), so that the
last stage's output is what the classifier pools: CAM = ``fc`` as a 1x1 conv on that output stays
exact, and ``run_from``/``forward_features`` at stage granularity need no special case.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import check
from ._layers import kaiming_init, make_stages
from ._registry import register_model
from .base import StagedModel


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus shortcut, with no activation after the sum.

    A projection shortcut (1x1 conv, when the shape changes) reads the pre-activated input, as in
    the identity-mapping paper's CIFAR code and Wide ResNets; the identity shortcut reads ``x``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + skip


class FinalBNReLU(nn.Sequential):
    """The closing BN-ReLU of a pre-activation net (last node of its last stage)."""

    def __init__(self, channels: int) -> None:
        super().__init__(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class PreActResNet(StagedModel):
    """Plain 3x3 conv stem, stages of pre-activation blocks ending in BN-ReLU, GAP + linear."""

    def __init__(
        self,
        blocks_per_stage: Sequence[int],
        widths: Sequence[int],
        num_classes: int,
        stem_width: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check(0.0 <= dropout < 1.0, f"dropout must be in [0, 1), got {dropout}")
        check(min(widths) >= 1 and stem_width >= 1, f"widths must be positive, got {widths}")
        self.stem = nn.Conv2d(3, stem_width, 3, 1, padding=1, bias=False)
        self.stages = make_stages(
            lambda c_in, c_out, stride: PreActBlock(c_in, c_out, stride, dropout),
            blocks_per_stage,
            widths,
            c_in=stem_width,
        )
        last_stage = self.stages[list(self.stages)[-1]]
        last_stage.append(FinalBNReLU(widths[-1]))
        self.fc = nn.Linear(widths[-1], num_classes)
        kaiming_init(self)


@register_model
def preact_resnet18(num_classes: int = 10, width: int = 64) -> PreActResNet:
    """PreAct ResNet-18 for 32x32 inputs; ``width`` is the first stage's filter count (64)."""
    widths = [width, 2 * width, 4 * width, 8 * width]
    return PreActResNet([2, 2, 2, 2], widths, num_classes, stem_width=width)
