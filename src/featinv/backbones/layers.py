"""Which layer's map a backbone exposes: ``last`` (the last spatial map before pooling, what FeatInv
conditions on) or an intermediate stage named by its module in timm's ``feature_info`` (``blocks.4``
of an EfficientNet, ``stages.2`` of a ConvNeXt, ``layers.1`` of a Swin, ``blocks.5`` of a ViT: the
token grid of that block).

A (backbone, layer) pair is named by its source id (:mod:`featinv.sourceid`).
"""

from __future__ import annotations

from torch import nn

from featinv.sourceid import LAST


def layer_names(model: nn.Module) -> list[str]:
    """The layers a timm model can expose: ``last``, then its ``feature_info`` modules, shallow to deep."""
    info = getattr(model, "feature_info", None) or []
    return [LAST] + [str(entry["module"]) for entry in info]


def check_layer(model: nn.Module, name: str, layer: str) -> str:
    """``layer`` if ``model`` (timm model ``name``) has it, else a ValueError listing the valid names."""
    valid = layer_names(model)
    if layer not in valid:
        raise ValueError(f"backbone '{name}' has no layer '{layer}'; valid layers: {', '.join(valid)}")
    return layer


def valid_layers(name: str) -> list[str]:
    """The layer names of timm model ``name`` (built with random weights: nothing is loaded)."""
    import timm

    return layer_names(timm.create_model(name, pretrained=False))
