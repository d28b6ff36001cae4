"""Reusable layers (no training logic): Top-GAP pooling and head, channel selection, ..."""

from .fpn_head import FPNHead
from .topk_pool import TopKPool2d, topk_pool2d
