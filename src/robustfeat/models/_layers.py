"""Building blocks shared by the built-in CIFAR backbones (conv+BN, stage assembly, init)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

# (c_in, c_out, stride) -> one residual block
BlockFactory = Callable[[int, int, int], nn.Module]


def conv_bn(
    c_in: int, c_out: int, stride: int = 1, kernel: int = 3, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    )


def make_stages(
    make_block: BlockFactory, blocks_per_stage: Sequence[int], widths: Sequence[int], c_in: int
) -> nn.ModuleDict:
    """Stages ``stage1..stageN`` as ``nn.Sequential`` of blocks (so each block is a node).

    The first stage keeps the resolution; every later stage halves it in its first block.
    """
    stages: dict[str, nn.Module] = {}
    for i, (n_blocks, width) in enumerate(zip(blocks_per_stage, widths, strict=True)):
        blocks = []
        for b in range(n_blocks):
            stride = 2 if (i > 0 and b == 0) else 1
            blocks.append(make_block(c_in, width, stride))
            c_in = width
        stages[f"stage{i + 1}"] = nn.Sequential(*blocks)
    return nn.ModuleDict(stages)


def kaiming_init(model: nn.Module) -> None:
    """He-normal conv weights (fan_out, ReLU), BN scale 1 / shift 0, zero linear bias."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
