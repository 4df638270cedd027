"""The zarr v3 feature store of one (dataset, backbone, split), a :mod:`featinv.rowstore`.

Arrays (row i = i-th sample of the split in manifest order):

- ``features`` (N, C, H, W) float16, sharded along N: the last spatial feature map;
- ``pooled`` (N, C) float16: the model's own global pooling of that map;
- ``topk_indices`` (N, k) int32 and ``topk_probs`` (N, k) float32: the backbone's predictions;
- ``labels`` (N,) int32 and ``keys`` (N,) str: the sample's class and shard key;
- ``done`` (n_blocks,) bool: which row blocks (one zarr shard each) are written.

Group attributes record the backbone, weights source, preprocessing (with the input size), the
view the backbone saw (``features.view``), layer, dtype, source manifest and package versions.
"""

from __future__ import annotations

from pathlib import Path

from featinv.rowstore import ArraySpec, bytes_on_disk, open_complete, partial_path

FEATURE_DTYPE = "float16"

__all__ = ["FEATURE_DTYPE", "VARIANTS", "arrays", "bytes_on_disk", "conditioning", "partial_path", "stores_by_backbone"]


VARIANTS = ("unpooled", "pooled")  # FeatInv's conditioning: the spatial map, or the pooled vector (the baseline)


def conditioning(group, variant: str):
    """The array of a feature store that FeatInv's ``variant`` is conditioned on."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got '{variant}'")
    return group["pooled"] if variant == "pooled" else group["features"]


def stores_by_backbone(paths: list[str | Path]) -> dict[str, str | Path]:
    """{backbone name: path} of complete feature stores, from each store's own attributes."""
    return {str(open_complete(path).attrs["backbone"]): path for path in paths}


def arrays(fmap_shape: tuple[int, int, int], topk: int) -> ArraySpec:
    return {
        "features": (tuple(fmap_shape), FEATURE_DTYPE, 0),
        "pooled": ((fmap_shape[0],), FEATURE_DTYPE, 0),
        "topk_indices": ((topk,), "int32", -1),
        "topk_probs": ((topk,), "float32", 0),
        "labels": ((), "int32", -1),
        "keys": ((), "str", None),
    }
