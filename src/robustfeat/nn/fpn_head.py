"""The Top-GAP class-map head (Nieradzik et al., "Top-GAP", Sec. 3.1 and Fig. 2).

The last 3 or 4 stage outputs each go through a 3x3 convolution with ``width`` filters (256 in
the paper), are upsampled to the size of the largest of them and *added* (the paper found no
advantage in concatenation), optionally dropped out, and a final 1x1 convolution with one filter
per class gives the class maps X^(n+1) at the resolution of the largest input map. The paper's
Fig. 2 shows plain convolutions (no normalisation or activation between them), so there are
none here. With ``fpn=False`` (the FPN-off ablation of Table 7) the head is only the 1x1
convolution on the last (deepest) map: the backbone's linear classifier applied as a 1x1 conv.
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
        if fpn:
            self.lateral = nn.ModuleList(nn.Conv2d(c, width, 3, padding=1) for c in in_channels)
            classifier_in = width
        else:
            self.lateral = nn.ModuleList()
            classifier_in = in_channels[-1]
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(classifier_in, num_classes, 1)

    def merge(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """The summed, upsampled lateral outputs (or the last map when ``fpn`` is off)."""
        if not self.fpn:
            return features[-1]
        check(
            len(features) == len(self.lateral),
            f"FPNHead built for {len(self.lateral)} maps, got {len(features)}",
        )
        size = max((f.shape[-2:] for f in features), key=lambda s: s[0] * s[1])
        merged = None
        for conv, feature in zip(self.lateral, features, strict=True):
            out = conv(feature)
            if out.shape[-2:] != size:
                kwargs = {"align_corners": False} if self.upsample == "bilinear" else {}
                out = F.interpolate(out, size=size, mode=self.upsample, **kwargs)
            merged = out if merged is None else merged + out
        return merged

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.dropout(self.merge(features)))
