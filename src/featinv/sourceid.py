"""Source ids: the name of a (backbone, layer) pair in paths, stores, tables and model metadata. The
timm name stands for its last spatial map (``last``, what FeatInv conditions on), ``name@layer`` for
another layer (``tf_efficientnet_lite0@blocks.4``; :mod:`featinv.backbones.layers`)."""

from __future__ import annotations

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
