"""The Top-GAP class-map head (Nieradzik et al., "Top-GAP", Sec. 3.1 and Fig. 2).

The last 3 or 4 stage outputs each go through a 3x3 convolution with ``width`` filters (256 in
the paper), are upsampled to the size of the largest of them and *added* (the paper found no
advantage in concatenation), optionally dropped out, and a final 1x1 convolution with one filter
per class gives the class maps X^(n+1) at the resolution of the largest input map. The paper's
Fig. 2 shows plain convolutions (no normalisation or activation between them), so there are
none here. With ``fpn=False`` (the FPN-off ablation of Table 7) the head is only the 1x1
convolution on the last (deepest) map: the backbone's linear classifier applied as a 1x1 conv.

Fused computation (``fused=True``, default). Without dropout the head is linear end to end:
X = W (sum_i up(K_i * F_i + b_i)) + b, and upsampling (per channel) commutes with the per-pixel
1x1 conv W, so X = sum_i up((W K_i) * F_i + W b_i) + b. The fused path builds the composed
kernels W K_i (num_classes x c_i x 3 x 3) from the same parameters, differentiably, and runs
num_classes-filter convolutions instead of ``width``-filter ones and upsamples num_classes maps
instead of ``width``: the same function of the same parameters (identical gradients up to float
rounding) at a fraction of the cost; the paper's 256-filter head at 32x32 otherwise costs more
than ResNet-20 itself. Dropout on the summed map (training with ``dropout > 0``) does not
commute, so that case runs the plain path. A consequence worth knowing: for ``width >=
num_classes`` the head's width does not change the function class, only the parametrisation
(optimisation dynamics, weight decay).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import check

UPSAMPLE_MODES = ("nearest", "bilinear")


class FPNHead(nn.Module):
    """Feature maps (any order) -> class maps (B, num_classes, H, W) at the largest map's size."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        width: int = 256,
        dropout: float = 0.0,
        fpn: bool = True,
        upsample: str = "nearest",
        fused: bool = True,
    ) -> None:
        super().__init__()
        check(len(in_channels) >= 1, "FPNHead needs at least one input feature map")
        check(
            isinstance(width, int) and width >= 1, f"head width must be an int >= 1, got {width!r}"
        )
        check(0.0 <= dropout < 1.0, f"head dropout must be in [0, 1), got {dropout!r}")
        check(
            upsample in UPSAMPLE_MODES,
            f"upsample must be one of {UPSAMPLE_MODES}, got {upsample!r}",
        )
        self.fpn = fpn
        self.upsample = upsample
        self.fused = fused
        if fpn:
            self.lateral = nn.ModuleList(nn.Conv2d(c, width, 3, padding=1) for c in in_channels)
            classifier_in = width
        else:
            self.lateral = nn.ModuleList()
            classifier_in = in_channels[-1]
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(classifier_in, num_classes, 1)

    def _resize(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        if x.shape[-2:] == size:
            return x
        kwargs = {"align_corners": False} if self.upsample == "bilinear" else {}
        return F.interpolate(x, size=size, mode=self.upsample, **kwargs)

    def _sum_at_largest(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        merged = self._resize(maps[0], size)
        for m in maps[1:]:
            merged = merged + self._resize(m, size)
        return merged

    def _check(self, features: Sequence[torch.Tensor]) -> None:
        check(
            len(features) == len(self.lateral),
            f"FPNHead built for {len(self.lateral)} maps, got {len(features)}",
        )

    def merge(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The summed, upsampled lateral outputs (or the last map when ``fpn`` is off)."""
        if not self.fpn:
            return features[-1]
        self._check(features)
        return self._sum_at_largest(
            [conv(f) for conv, f in zip(self.lateral, features, strict=True)]
        )

    def fused_maps(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The class maps through the composed kernels W K_i (see the module docstring)."""
        self._check(features)
        weight = self.classifier.weight[:, :, 0, 0]  # (classes, width)
        maps = []
        for conv, feature in zip(self.lateral, features, strict=True):
            kernel = torch.einsum("cw,wikl->cikl", weight, conv.weight)
            maps.append(F.conv2d(feature, kernel, weight @ conv.bias, padding=conv.padding))
        return self._sum_at_largest(maps) + self.classifier.bias[None, :, None, None]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        dropout_active = self.training and isinstance(self.dropout, nn.Dropout)
        if self.fpn and self.fused and not dropout_active:
            return self.fused_maps(features)
        return self.classifier(self.dropout(self.merge(features)))
