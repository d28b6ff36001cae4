"""Reusable layers (no training logic)."""

from .dual_bn import DualBatchNorm2d, aux_bn, convert_dual_bn
from .feature_slot import FeatureSlot
