"""CIFAR ResNets: the "s" family of He et al. 2016 (ResNet-20/32/56/110, 3 stages of 16/32/64
channels, parameter-free option-A shortcuts, as used by HNC and ALFA) and the 4-stage ResNet-18
with a 3x3 stem (the CIFAR variant common in adversarial-robustness work, e.g. CIFS)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._registry import register_model
from .base import StagedModel


def conv_bn(c_in: int, c_out: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    )


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.pad = c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
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
    def __init__(
        self,
        blocks_per_stage: list[int],
        widths: list[int],
        num_classes: int,
        shortcut: str,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, widths[0]), nn.ReLU(inplace=True))
        stages: dict[str, nn.Module] = {}
        c_in = widths[0]
        for i, (n, width) in enumerate(zip(blocks_per_stage, widths, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(c_in if b == 0 else width, width, stride if b == 0 else 1, shortcut)
                      for b in range(n)]
            stages[f"stage{i + 1}"] = nn.Sequential(*blocks)
            c_in = width
        self.stages = nn.ModuleDict(stages)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _resnet_s(depth: int, num_classes: int, width: int = 16) -> CifarResNet:
    n = (depth - 2) // 6
    return CifarResNet([n] * 3, [width, 2 * width, 4 * width], num_classes, shortcut="pad")


@register_model
def resnet20(num_classes: int = 10, width: int = 16) -> CifarResNet:
    return _resnet_s(20, num_classes, width)


@register_model
def resnet32(num_classes: int = 10, width: int = 16) -> CifarResNet:
    return _resnet_s(32, num_classes, width)


@register_model
def resnet56(num_classes: int = 10, width: int = 16) -> CifarResNet:
    return _resnet_s(56, num_classes, width)


@register_model
def resnet110(num_classes: int = 10, width: int = 16) -> CifarResNet:
    return _resnet_s(110, num_classes, width)


@register_model
def resnet18(num_classes: int = 10, width: int = 64) -> CifarResNet:
    """ResNet-18 for 32x32 inputs: 3x3 stem, no max-pool, 4 stages, 1x1 conv shortcuts."""
    return CifarResNet([2, 2, 2, 2], [width, 2 * width, 4 * width, 8 * width], num_classes, "conv")
