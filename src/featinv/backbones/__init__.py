"""Backbones: one interface over timm families (spatial feature map, pooling, head, preprocessing)."""

from featinv.backbones.registry import Backbone, ImageOutputs, Images, WeightsError, create_backbone

__all__ = ["Backbone", "ImageOutputs", "Images", "WeightsError", "create_backbone"]
