"""Backbones: one interface over timm families (spatial feature map, pooling, head, preprocessing)."""

from featinv.backbones.registry import Backbone, WeightsError, create_backbone

__all__ = ["Backbone", "WeightsError", "create_backbone"]
