"""CIFAR ResNets (post-activation, He et al. 2016, "Deep Residual Learning").

- ResNet-20/32/56/110: the CIFAR family of Sec. 4.2 of the paper (as used by HNC and ALFA):
  a 3x3 conv with 16 filters, then 3 stages of n basic blocks with 16/32/64 filters at
  32/16/8 pixels (depth 6n+2), global average pooling and a linear layer; option-A shortcuts
  (stride-2 subsampling plus zero-padding of the new channels, no parameters). ResNet-20 has
  0.27M parameters, as in Table 6 of the paper.
- ResNet-18: the ImageNet ResNet-18 layout (4 stages of 2 basic blocks, 64..512 filters, 1x1 conv
  projection shortcuts) with a 3x3 stride-1 stem and no max-pool for 32x32 inputs, the variant
  common in adversarial-robustness work (e.g. CIFS): 11.17M parameters for 10 classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import check
from ._layers import conv_bn, kaiming_init, make_stages
from ._registry import register_model
from .base import StagedModel


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.pad = c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str = "conv") -> None:
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, stride)
        self.conv2 = conv_bn(c_out, c_out)
        if stride == 1 and c_in == c_out:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "pad":
            self.shortcut = PadShortcut(c_in, c_out)
        else:
            self.shortcut = conv_bn(c_in, c_out, stride, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        return F.relu(self.conv2(out) + self.shortcut(x))


class CifarResNet(StagedModel):
    """3x3 conv-BN-ReLU stem, stages of basic blocks, GAP + linear."""

    def __init__(
        self,
        blocks_per_stage: list[int],
        widths: list[int],
        num_classes: int,
        shortcut: str,
    ) -> None:
        super().__init__()
        check(shortcut in ("pad", "conv"), f"shortcut must be 'pad' or 'conv', got {shortcut!r}")
        check(min(widths) >= 1, f"stage widths must be positive, got {widths}")
        self.stem = nn.Sequential(conv_bn(3, widths[0]), nn.ReLU(inplace=True))
        self.stages = make_stages(
            lambda c_in, c_out, stride: BasicBlock(c_in, c_out, stride, shortcut),
            blocks_per_stage,
            widths,
            c_in=widths[0],
        )
        self.fc = nn.Linear(widths[-1], num_classes)
        kaiming_init(self)


def _resnet_s(depth: int, num_classes: int, width: int) -> CifarResNet:
    n = (depth - 2) // 6
    return CifarResNet([n] * 3, [width, 2 * width, 4 * width], num_classes, shortcut="pad")


@register_model
def resnet20(num_classes: int = 10, width: int = 16) -> CifarResNet:
    """ResNet-20 (n=3) of He et al. 2016; ``width`` is the first stage's filter count."""
    return _resnet_s(20, num_classes, width)


@register_model
def resnet32(num_classes: int = 10, width: int = 16) -> CifarResNet:
    """ResNet-32 (n=5) of He et al. 2016."""
    return _resnet_s(32, num_classes, width)


@register_model
def resnet56(num_classes: int = 10, width: int = 16) -> CifarResNet:
    """ResNet-56 (n=9) of He et al. 2016."""
    return _resnet_s(56, num_classes, width)


@register_model
def resnet110(num_classes: int = 10, width: int = 16) -> CifarResNet:
    """ResNet-110 (n=18) of He et al. 2016."""
    return _resnet_s(110, num_classes, width)


@register_model
def resnet18(num_classes: int = 10, width: int = 64) -> CifarResNet:
    """ResNet-18 for 32x32 inputs: 3x3 stem, no max-pool, 4 stages, 1x1 conv shortcuts."""
    return CifarResNet([2, 2, 2, 2], [width, 2 * width, 4 * width, 8 * width], num_classes, "conv")
