"""Which layer's map a backbone exposes: ``last`` (the last spatial map before pooling, what FeatInv
conditions on) or an intermediate stage named by its module in timm's ``feature_info`` (``blocks.4``
of an EfficientNet, ``stages.2`` of a ConvNeXt, ``layers.1`` of a Swin, ``blocks.5`` of a ViT: the
token grid of that block).

A *source id* names a (backbone, layer) pair in paths, stores and tables: the timm name for the last
layer, ``name@layer`` for another (``tf_efficientnet_lite0@blocks.4``).
"""

from __future__ import annotations

from torch import nn

LAST = "last"
SEPARATOR = "@"


def split_source(source: str) -> tuple[str, str]:
    """``name@layer`` -> (name, layer); a bare name -> (name, ``last``)."""
    name, _, layer = source.partition(SEPARATOR)
    return name, layer or LAST


def source_id(name: str, layer: str = LAST) -> str:
    return name if layer == LAST else f"{name}{SEPARATOR}{layer}"


def backbone_name(source: str) -> str:
    """The timm name of a source id (what weights and input sizes are keyed on)."""
    return split_source(source)[0]


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
