"""Where a feature store's maps came from, rebuilt from its attributes: the backbone (at the input
size it ran at) and the view it saw of each image, so that reconstructions are scored by the same
network at the same size."""

from __future__ import annotations

from pathlib import Path

from featinv.backbones import Backbone, create_backbone


def store_backbone(attrs, weights: str | Path | None = None) -> Backbone:
    """The backbone a store's maps came from, at the input size they were computed at."""
    return create_backbone(str(attrs["backbone"]), weights=weights, input_size=int(attrs["preprocessing"]["input_size"][-1]))


def store_view(attrs) -> str:
    """What the backbone saw of each image (``features.view``; stores written before it: the eval transform)."""
    return str(attrs.get("view", "eval_transform"))
