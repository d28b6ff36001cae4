"""Reusable layers (no training logic): dual BN, feature slots, global average and Top-GAP
pooling, FPN head."""

from .channel_select import ActivationSuppress, ChannelSelect
from .dual_bn import DualBatchNorm2d, aux_bn, convert_dual_bn
from .feature_slot import FeatureSlot
from .fpn_head import FPNHead
from .topk_pool import TopKPool2d, global_avg_pool2d, topk_pool2d
