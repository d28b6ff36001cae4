"""Reusable layers (no training logic)."""

from .channel_select import ActivationSuppress, ChannelSelect
