"""A split's stage representations x_0 (the normalised images), x_1, ..., x_n as a rowstore: one
array per stage, sharded along N, written once block by block (an interrupted pass resumes at the
first unfinished block) and read by row indices in batches. Memory stays bounded by one block of
images whatever the split size, so inverses train on ImageNet or COCO train as on the demo.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from featinv import rowstore
from featinv.data.shards import index_split, keys_digest, read_image
from featinv.data.target_view import TargetView


def fit_image(img: Image.Image, size: tuple[int, int], fit: str,
              resample: int = Image.Resampling.BICUBIC) -> Image.Image:
    """``img`` at ``size`` (H, W): ``crop`` = the largest central box of that aspect ratio, resized;
    ``resize`` = the whole image resized, its aspect ratio not kept (``modular.fit``)."""
    if fit == "crop":
        return TargetView(size).image(img, resample)
    if fit == "resize":
        return img.resize((size[1], size[0]), resample)
    raise ValueError(f"modular.fit is crop or resize, not '{fit}'")


def stage_key(j: int) -> str:
    return f"x{j}"


@torch.no_grad()
def write_representations(forward, shards: str | Path, split: str, out: str | Path, rows_per_shard: int = 128,
                          batch: int = 32, progress: bool = True) -> Path:
    """x_0 .. x_n of every image of ``split`` (float32) into the rowstore ``out``; reuses a complete
    store made from the same images and forward model."""
    out = Path(out)
    index = index_split(shards, split, views=False)
    digest = keys_digest(index)
    attrs = {"forward": forward.name, "stages": forward.staged.names, "split": split,
             "image_size": list(forward.image_size), "fit": forward.fit, "keys_digest": digest}
    if out.exists():
        done = rowstore.open_complete(out)
        if {k: done.attrs.get(k) for k in attrs} == attrs:
            return out
        shutil.rmtree(out)  # made from other images or another forward model
    probe = forward.staged.representations(forward.normalise(torch.zeros(1, 3, *forward.image_size)))
    arrays = {stage_key(j): (tuple(r.shape[1:]), "float32", 0) for j, r in enumerate(probe)}
    group, _ = rowstore.open_or_resume(out, len(index), arrays, rows_per_shard, min(rows_per_shard, 64), attrs)
    writer = rowstore.BlockWriter(group)
    for rows in tqdm(rowstore.pending_batches(group, batch), desc=f"{forward.name} {split} stages", unit="batch",
                     disable=not progress, mininterval=2.0):
        pixels = np.stack([np.asarray(fit_image(read_image(index[r]), forward.image_size, forward.fit))
                           for r in rows]).astype(np.float32) / 255.0
        reps = forward.staged.representations(forward.normalise(torch.from_numpy(pixels).permute(0, 3, 1, 2)))
        writer.add(rows, {stage_key(j): r.float().numpy() for j, r in enumerate(reps)})
    rowstore.finalize(out)
    return out


class StageRows:
    """One stage's array of a representation store, indexed by a batch of row indices like a tensor
    (repeats allowed), read from disk per batch."""

    def __init__(self, array):
        self.array = array

    def __len__(self) -> int:
        return int(self.array.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, slice):  # a contiguous block: a plain zarr read
            return torch.from_numpy(np.ascontiguousarray(self.array[idx]))
        idx = np.asarray(idx, dtype=np.int64)
        unique, inverse = np.unique(idx, return_inverse=True)
        return torch.from_numpy(np.ascontiguousarray(self.array.get_orthogonal_selection((unique,))[inverse]))


def stage_rows(store: str | Path, memory_limit: int = 512 << 20) -> list[StageRows | torch.Tensor]:
    """[x_0, ..., x_n] of a representation store: held in memory when all of it fits in
    ``memory_limit`` bytes (the demo: reading per batch would cost more than training), else each
    read per batch."""
    group = rowstore.open_complete(store)
    arrays = [group[stage_key(j)] for j in range(len(group.attrs["stages"]) + 1)]
    if sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in arrays) <= memory_limit:
        return [torch.from_numpy(a[:]) for a in arrays]
    return [StageRows(a) for a in arrays]


def mean_of(rows: StageRows | torch.Tensor, block: int = 256) -> torch.Tensor:
    """The mean over all rows (1, ...), accumulated block by block in float64."""
    total: torch.Tensor | None = None
    for start in range(0, len(rows), block):
        part = rows[start:start + block].double().sum(0, keepdim=True)
        total = part if total is None else total + part
    if total is None:
        raise ValueError("the mean of no rows")
    return (total / len(rows)).float()
