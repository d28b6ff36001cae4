"""Top-GAP: size priors through top-k pooling of class maps (Nieradzik et al., "Top-GAP:
Integrating Size Priors in CNNs for more Robustness, Interpretability, and Bias Mitigation").

The backbone's linear classifier is replaced (paper Sec. 3.1, Table 1) by the FPN head of Fig. 2
(``robustfeat.nn.FPNHead``): the last 3 or 4 stage outputs -> 3x3 convs (256 filters) ->
upsampled and added -> 1x1 conv with one filter per class = class maps X^(n+1) at the resolution
of the largest stage. The logits are Top-GAP(X, k) (Def. 3.5, ``TopKPool2d``): per class, the
mean of its k largest positions. The loss is Eq. (1): CE(softmax(Top-GAP(X, k)), y) + lam ||X||_1.

No official code of the paper was found, so every normalisation is our reading, documented:

- ``l1_norm="mean"`` (default): ||X||_1 as the mean |X| over batch, classes and positions (an
  average, so lam = 1, the paper's "sufficient for most datasets" value, is a moderate weight
  whatever the map size); ``"sum"``: the literal per-image ||X||_1, summed over classes and
  positions, averaged over the batch (h*w*classes times larger: 10240x for a 32x32 map and 10
  classes). The penalty is computed in fp32 even under bf16 autocast.
- ``lam_warmup``: lam ramps linearly from 0 over the first N optimizer steps (0 = off). With the
  "sum" normalisation the penalty's gradient (lam * sign(X) for each of the h*w*classes map
  entries, summed into the 1x1 conv and the FPN convs) is thousands of times CE's at
  initialisation; the L1 subgradient does not shrink near 0, and because X is a product of the
  class conv and the FPN features, each overshoot grows both, so |X| explodes geometrically and
  the loss is NaN within a few steps even at the warm-up's tiny learning rates, in bf16 and fp32
  alike (with one learning rate for the head: benchmarks/topgap_stability.py; a warm-up of lam
  only delays it). A penalty more than 10x the "mean" lam = 1 (for "sum": lam * h*w*classes)
  triggers a warning.
- The ablation switches of Table 7: ``fpn`` (False: the 1x1 conv on the last stage only, i.e.
  the backbone's classifier as a conv), ``l1`` (False: no penalty; it is still logged) and
  ``topgap`` (False: GAP instead of top-k pooling).
- ``head_lr`` (default 0.1): the head's learning rate as a fraction of the base one. The
  paper's head is two stacked linear layers (3x3 convs, then the 1x1 class conv) with no
  normalisation, and top-k pooling feeds its gradient to a few positions: with a fast warm-up
  (lr 0.2 reached at step 30) it diverges to NaN within ~15 steps once the lr passes ~0.07, with
  or without the L1 term, at k = 16 or 64, width 256 or 64 (``benchmarks/topgap_stability.py
  --schedule-steps 200``); with the head at 0.1x it trains through lr 0.2. The cpu recipe's own
  warm-up (585 steps) is slow enough for one learning rate: its k 64 cell at ``head_lr=1``
  trained to 82.8% clean (83.8% at 0.1; ``cpu-sweeps/topgap_k64_headlr1``), so 0.1 is a margin
  for shorter warm-ups, not a must. The paper gives no optimiser settings; ``head_lr=1``
  restores a single learning rate.
- ``fused_head`` (default True): the head runs through its composed kernels (the same function
  and gradients at a fraction of the cost, see ``robustfeat.nn.fpn_head``); False runs the
  literal 256-filter convolutions (for timing comparisons).
- "CAM mode" (Sec. 3.1): ``eval_model().cam(x)`` gives the class maps upsampled to the input
  size and min-max normalised to [0, 1]; ``class_maps(x)`` the raw maps.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import check
from ..interpret.cam import small_class_map_warning, to_input_size
from ..models.base import StagedModel
from ..nn.fpn_head import FPNHead
from ..nn.topk_pool import check_k, global_avg_pool2d, topk_pool2d
from ._base import AttackLoss, Method
from ._registry import register_method

L1_NORMS = ("mean", "sum")


def l1_penalty(maps: torch.Tensor, norm: str = "mean") -> torch.Tensor:
    """||X^(n+1)||_1 of Eq. (1) of Nieradzik et al. in fp32: ``mean`` = mean |X| over batch,
    classes and positions; ``sum`` = per image sum over classes and positions, batch mean."""
    check(norm in L1_NORMS, f"l1_norm must be one of {L1_NORMS}, got {norm!r}")
    magnitude = maps.float().abs()
    return magnitude.mean() if norm == "mean" else magnitude.flatten(1).sum(1).mean()


# With one learning rate for everything (head_lr=1), "sum" penalties of 512x and 10240x the
# "mean" lam=1 diverged within 4-8 steps of the cpu recipe, 10x did not
# (benchmarks/results/topgap_stability.json).
MAX_STABLE_MEAN_EQUIVALENT = 10.0


def warn_if_overweighted(lam: float, l1_norm: str, entries_per_image: int) -> None:
    """Warn when the penalty weighs more than ``MAX_STABLE_MEAN_EQUIVALENT`` x the "mean" one
    with lam = 1 (the "sum" norm is ``entries_per_image`` times the "mean" one)."""
    equivalent = lam * entries_per_image if l1_norm == "sum" else lam
    if equivalent > MAX_STABLE_MEAN_EQUIVALENT:
        warnings.warn(
            f"topgap: lam={lam} with l1_norm={l1_norm!r} weighs the L1 penalty like lam="
            f"{equivalent:g} with l1_norm='mean' ({entries_per_image} class-map entries per "
            f"image); far above {MAX_STABLE_MEAN_EQUIVALENT:g} training diverged to NaN within a "
            "few steps of the cpu recipe (see benchmarks/topgap_stability.py)",
            stacklevel=3,
        )


def head_stages(model: StagedModel, num_maps: int, fpn: bool) -> list[str]:
    """The stage outputs the head reads: the last ``num_maps`` stages (the stem excluded), or
    only the last stage without the FPN."""
    stages = [name for name in model.stage_names if name != "stem"]
    return stages[-1:] if not fpn else stages[-num_maps:]


class TopGapNet(nn.Module):
    """Backbone stages -> FPN head -> class maps -> Top-GAP (or GAP) pooling -> logits."""

    def __init__(
        self,
        backbone: StagedModel,
        stages: Sequence[str],
        head: FPNHead,
        k: int | float | None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.stages = list(stages)
        self.head = head
        self.k = k  # None: GAP

    @property
    def num_classes(self) -> int:
        return self.head.classifier.out_features

    @property
    def cam_target_layer(self) -> nn.Module:
        """Where Grad-CAM reads this network (its own maps are ``class_maps``): the backbone's
        last node."""
        return self.backbone._nodes[-1][1]

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        """X^(n+1): (B, classes, H, W) at the resolution of the largest stage read."""
        features = self.backbone.forward_features(x, nodes=self.stages)
        return self.head(list(features.values()))

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """Top-GAP(X, k) of Def. 3.5 (GAP when k is None)."""
        return global_avg_pool2d(maps) if self.k is None else topk_pool2d(maps, self.k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.class_maps(x))

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """CAM mode (Sec. 3.1): no pooling; maps at the input size, min-max scaled to [0, 1]."""
        return to_input_size(self.class_maps(x), tuple(x.shape[-2:]))


@register_method
class TopGAP(Method):
    """Top-GAP head and pooling, CE + lam * L1 of the class maps (Eq. 1)."""

    name = "topgap"

    def __init__(
        self,
        model: StagedModel,
        k: int | float = 64,
        lam: float = 1.0,
        l1_norm: str = "mean",
        lam_warmup: int = 0,
        width: int = 256,
        num_maps: int = 4,
        dropout: float = 0.0,
        upsample: str = "nearest",
        fpn: bool = True,
        l1: bool = True,
        topgap: bool = True,
        fused_head: bool = True,
        head_lr: float = 0.1,
    ) -> None:
        check_k(k)
        check(isinstance(lam, (int, float)) and lam >= 0, f"topgap lam must be >= 0, got {lam!r}")
        check(l1_norm in L1_NORMS, f"topgap l1_norm must be one of {L1_NORMS}, got {l1_norm!r}")
        check(
            isinstance(lam_warmup, int) and lam_warmup >= 0,
            f"topgap lam_warmup must be an int >= 0 (optimizer steps), got {lam_warmup!r}",
        )
        check(
            isinstance(num_maps, int) and num_maps >= 1,
            f"topgap num_maps must be an int >= 1, got {num_maps!r}",
        )
        num_classes = model.num_classes
        stages = head_stages(model, num_maps, fpn)
        head = FPNHead(
            [model.feature_info[s].channels for s in stages],
            num_classes,
            width=width,
            dropout=dropout,
            fpn=fpn,
            upsample=upsample,
            fused=fused_head,
        )
        largest = max(model.feature_info[s].size[0] * model.feature_info[s].size[1] for s in stages)
        warn_if_overweighted(lam, l1_norm, num_classes * largest)
        model.fc = nn.Identity()  # the Top-GAP head replaces the linear classifier
        super().__init__(TopGapNet(model, stages, head, k if topgap else None))
        self.lam, self.l1_norm, self.lam_warmup, self.use_l1 = float(lam), l1_norm, lam_warmup, l1
        check(head_lr > 0, f"topgap head_lr must be > 0, got {head_lr!r}")
        self.head_lr = float(head_lr)
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def param_groups(self, base: dict[str, Any]) -> list[dict[str, Any]]:
        """The head's parameters get ``head_lr`` times the base learning rate."""
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        ids = {id(p) for p in head}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest, **base}, {"params": head, **base, "lr": base["lr"] * self.head_lr}]

    def compile_targets(self) -> list[nn.Module]:
        return [module for _, module in self.model.backbone._nodes] + [self.model.head]

    def attack_losses(self) -> dict[str, AttackLoss]:
        """``gap_ce``: CE of the class maps' *average* (GAP) instead of their top-k mean. Top-k
        pooling sends the gradient to k positions per class only, a known way to starve
        gradient attacks; the GAP surrogate gives every position a gradient (the paper itself
        reports APGD at about 7% where PGD-20 gives 52%)."""
        net = self.model

        def gap_ce(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits = global_avg_pool2d(net.class_maps(x).float())
            return F.cross_entropy(logits, y, reduction="none")

        return {"gap_ce": gap_ce}

    def current_lam(self) -> float:
        """lam, ramped linearly over the first ``lam_warmup`` optimizer steps."""
        if not self.lam_warmup:
            return self.lam
        return self.lam * min(1.0, (int(self.steps_done) + 1) / self.lam_warmup)

    def after_step(self) -> None:
        self.steps_done += 1

    def startup_warnings(self, total_steps: int, image_shape: tuple[int, ...]) -> list[str]:
        return small_class_map_warning(self.eval_model(), image_shape, self.name)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.model.class_maps(x)
        logits = self.model.pool(maps)
        if y.ndim == 2:  # multi-hot labels: one sigmoid per class
            cls = F.binary_cross_entropy_with_logits(logits.float(), y.float())
        else:
            cls = F.cross_entropy(logits.float(), y)
        penalty = l1_penalty(maps, self.l1_norm)
        out = {"logits": logits, "loss_ce": cls, "loss_l1": penalty}
        lam = self.current_lam() if self.use_l1 else 0.0
        out["loss"] = cls + lam * penalty if lam else cls
        if self.lam_warmup:
            out["lam_l1"] = torch.tensor(lam)
        return out
