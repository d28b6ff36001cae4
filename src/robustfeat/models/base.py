"""The stage contract every backbone follows (docs/DESIGN.md, "The backbone contract").

A ``StagedModel`` is ``normalize -> stem -> stages -> head``. Subclasses build ``self.stem``
(a module), ``self.stages`` (an ``nn.ModuleDict`` of stage name -> module, in order; a stage
that is an ``nn.Sequential`` exposes each of its blocks as a node ``"<stage>.<i>"``), and
``self.fc`` (the linear classifier after global average pooling). Methods use:

- ``forward_features(x)``: OrderedDict of stage outputs (``stem`` first), or any nodes asked for;
- ``forward_head(h)``: logits from the last stage's output;
- ``run_from(node, h)``: continue the forward from a node's output (TENET, ALFA, CIFS);
- ``stage_names``, ``node_names``, ``feature_info`` (channels and reduction per node).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.topk_pool import global_avg_pool2d
from .normalize import Normalize


@dataclass(frozen=True)
class FeatureInfo:
    name: str
    channels: int
    reduction: int
    size: tuple[int, int]  # spatial size for the model's default input size


class StagedModel(nn.Module):
    stem: nn.Module
    stages: nn.ModuleDict
    fc: nn.Module
    default_input_size: int = 32
    model_name: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.normalize = Normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    # ----------------------------------------------------------------- structure
    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ConfigError(f"normalization needs one positive std per mean, got {mean}, {std}")
        self.normalize.mean.copy_(torch.tensor(list(mean)).view(1, -1, 1, 1))
        self.normalize.std.copy_(torch.tensor(list(std)).view(1, -1, 1, 1))

    @property
    def stage_names(self) -> list[str]:
        return ["stem", *self.stages.keys()]

    @property
    def _nodes(self) -> list[tuple[str, nn.Module]]:
        # Recomputed on each call (cheap) so methods that wrap a block stay consistent.
        nodes: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        for stage_name, stage in self.stages.items():
            if isinstance(stage, nn.Sequential):
                nodes += [(f"{stage_name}.{i}", block) for i, block in enumerate(stage)]
            else:
                nodes.append((stage_name, stage))
        return nodes

    @property
    def node_names(self) -> list[str]:
        """Every point a feature can be read at or resumed from: stem, then blocks in order."""
        return [name for name, _ in self._nodes]

    def resolve_node(self, name: str) -> int:
        """Index in ``node_names`` of a node or stage name (a stage means its last block)."""
        names = self.node_names
        if name in names:
            return names.index(name)
        if name in self.stages:
            prefix = f"{name}."
            return max(i for i, n in enumerate(names) if n == name or n.startswith(prefix))
        raise ConfigError(
            f"unknown feature node {name!r} for {type(self).__name__}; "
            f"valid: stages {self.stage_names} or blocks {names}"
        )

    def node_of_stage(self, stage: str) -> str:
        return self.node_names[self.resolve_node(stage)]

    @property
    def num_classes(self) -> int:
        return self.get_classifier().out_features

    def get_classifier(self) -> nn.Linear:
        """The linear layer after global average pooling (CAM methods apply it as a 1x1 conv)."""
        if not isinstance(self.fc, nn.Linear):
            raise ConfigError(
                f"{type(self).__name__} has no GAP + linear head; CAM-based methods need one"
            )
        return self.fc

    @cached_property
    def feature_info(self) -> dict[str, FeatureInfo]:
        """Channels, reduction and spatial size of every stage and node (one dummy forward)."""
        size = self.default_input_size
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                param = next(self.parameters())
                x = torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)
                feats = self.forward_features(x, nodes=self.node_names + self.stage_names)
        finally:
            self.train(was_training)
        # Strides are powers of two; rounding keeps them right when the input is not a multiple
        # of the stride (176 px at stride 32 gives 6x6 maps: 176 // 6 would say 29).
        return {
            name: FeatureInfo(
                name,
                f.shape[1],
                2 ** max(0, round(math.log2(size / f.shape[-1]))),
                tuple(f.shape[-2:]),
            )
            for name, f in feats.items()
        }

    # ------------------------------------------------------------------- forward
    def forward_features(
        self, x: torch.Tensor, nodes: Iterable[str] | None = None
    ) -> OrderedDict[str, torch.Tensor]:
        """Outputs of the stages (default) or of the named nodes, in forward order."""
        wanted = list(self.stage_names if nodes is None else nodes)
        index_of = {name: self.resolve_node(name) for name in wanted}
        last = max(index_of.values())
        outputs: dict[int, torch.Tensor] = {}
        h = self.normalize(x)
        for i, (_, module) in enumerate(self._nodes[: last + 1]):
            h = module(h)
            outputs[i] = h
        return OrderedDict((name, outputs[index_of[name]]) for name in wanted)

    def forward_head(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(global_avg_pool2d(h))

    def run_from(self, node: str, h: torch.Tensor, until: str | None = None) -> torch.Tensor:
        """Resume the forward from ``node``'s output ``h``: to logits, or to ``until``'s output."""
        start = self.resolve_node(node) + 1
        stop = len(self._nodes) if until is None else self.resolve_node(until) + 1
        for _, module in self._nodes[start:stop]:
            h = module(h)
        return self.forward_head(h) if until is None else h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.normalize(x)
        for _, module in self._nodes:
            h = module(h)
        return self.forward_head(h)
