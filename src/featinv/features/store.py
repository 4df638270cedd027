"""The zarr v3 feature store of one (dataset, backbone, split).

Arrays (row i = i-th sample of the split in manifest order):

- ``features`` (N, C, H, W) float16, sharded along N: the last spatial feature map;
- ``pooled`` (N, C) float16: the model's own global pooling of that map;
- ``topk_indices`` (N, k) int32 and ``topk_probs`` (N, k) float32: the backbone's predictions;
- ``labels`` (N,) int32 and ``keys`` (N,) str: the sample's class and shard key;
- ``done`` (n_blocks,) bool: which row blocks (one zarr shard each) are written.

Group attributes record the backbone, weights source, preprocessing, layer, dtype, source manifest
and package versions. A store is written under ``<path>.partial`` and renamed into place when
every block is done, so a store at its final path is always complete.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zarr

FEATURE_DTYPE = "float16"


def partial_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial")


def create(path: Path, n: int, fmap_shape: tuple[int, int, int], topk: int, rows_per_shard: int,
           rows_per_chunk: int, attrs: dict[str, Any]) -> zarr.Group:
    """A new, empty store with every array allocated and ``done`` all False."""
    c, h, w = fmap_shape
    shard = min(rows_per_shard, max(n, 1))
    chunk = min(rows_per_chunk, shard)
    if shard % chunk:
        chunk = shard
    group = zarr.open_group(str(path), mode="w", zarr_format=3)

    def array(name, shape, dtype, fill=0):
        rest = tuple(shape[1:])
        return group.create_array(name, shape=shape, dtype=dtype, chunks=(chunk, *rest), shards=(shard, *rest),
                                  fill_value=fill)

    array("features", (n, c, h, w), FEATURE_DTYPE)
    array("pooled", (n, c), FEATURE_DTYPE)
    array("topk_indices", (n, topk), "int32", -1)
    array("topk_probs", (n, topk), "float32")
    array("labels", (n,), "int32", -1)
    group.create_array("keys", shape=(n,), dtype=str, chunks=(shard,))
    n_blocks = -(-n // shard)
    group.create_array("done", shape=(n_blocks,), dtype="bool", chunks=(max(n_blocks, 1),), fill_value=False)
    group.attrs.update({**attrs, "rows_per_block": shard, "complete": False})
    return group


def open_store(path: str | Path) -> zarr.Group:
    """Open a complete store read-only; a partial or missing store is an error."""
    path = Path(path)
    if not path.exists():
        hint = " (an interrupted extraction is at .partial: rerun it)" if partial_path(path).exists() else ""
        raise FileNotFoundError(f"feature store {path} does not exist{hint}")
    group = zarr.open_group(str(path), mode="r")
    if not group.attrs.get("complete"):
        raise ValueError(f"feature store {path} is incomplete: rerun the extraction")
    return group


def finalize(partial: Path, final: Path) -> None:
    """Mark complete, consolidate metadata once, and move into place."""
    group = zarr.open_group(str(partial), mode="r+")
    if not bool(np.all(group["done"][:])):
        raise RuntimeError(f"cannot finalize {partial}: blocks still missing")
    group.attrs["complete"] = True
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(partial))
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)


def bytes_on_disk(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
