"""``test_cnn``: a tiny CNN for tests and demos (~19k parameters, a few ms per batch on a CPU).

It is a ResNet-8 of width 8: a 3x3 conv-BN-ReLU stem with 8 filters and 3 stages of one basic
block (8/16/32 filters, option-A shortcuts), GAP + linear, so it exercises the same stage contract
(stem, staged nodes, GAP + linear head) as the real backbones.
"""

from __future__ import annotations

from ._registry import register_model
from .cifar_resnet import CifarResNet


@register_model
def test_cnn(num_classes: int = 10, width: int = 8) -> CifarResNet:
    return CifarResNet([1, 1, 1], [width, 2 * width, 4 * width], num_classes, shortcut="pad")
