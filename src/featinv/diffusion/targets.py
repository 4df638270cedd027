"""Cached diffusion targets: each image of a split, as the diffusion model sees it, encoded once.

The target view is the central square of the image resized to the diffusion resolution. Every
backbone's eval preprocessing (resize, centre crop) sees the centre of that same square, so the
feature map and the target describe the same content, and a reconstruction passed through the
backbone's own preprocessing is cropped the way the original was.

What is cached, and the trade-off: the official FeatInv code augments (random resized crop, flip)
and therefore runs the backbone and the VAE on every step. Here training reads feature maps from
the feature store and targets from this cache, so neither runs per step (an order of magnitude
cheaper per step at paper scale), at the price of training on one fixed view per image: no
augmentation. ImageNet's 1.28M images make that a small loss; on the demo it is the difference
between minutes and hours on a CPU.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from featinv import rowstore
from featinv.data.shards import index_split, read_image
from featinv.features.extract import resolve_device, shard_batches

log = logging.getLogger(__name__)


class TargetView:
    """PIL image -> (3, R, R) float tensor in [-1, 1]: central square, resized (bicubic, antialiased).
    ``resolution`` may also be (H, W): the largest central box of that aspect ratio, resized."""

    def __init__(self, resolution: int | tuple[int, int]):
        self.resolution = resolution
        self.size = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        out_h, out_w = self.size
        crop_w, crop_h = min(width, round(height * out_w / out_h)), min(height, round(width * out_h / out_w))
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        return left, top, left + crop_w, top + crop_h

    def image(self, img: Image.Image, resample: int = Image.Resampling.BICUBIC) -> Image.Image:
        out_h, out_w = self.size
        return img.crop(self.box(*img.size)).resize((out_w, out_h), resample)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        arr = np.asarray(self.image(img), dtype=np.float32) / 127.5 - 1.0
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def view_images(shards: str | Path, split: str, resolution: int | tuple[int, int],
                keys: list[str] | None = None) -> np.ndarray:
    """The target views of a split's images (all, or those of ``keys`` in that order): (N, H, W, 3) uint8."""
    index = index_split(shards, split)
    if keys is not None:
        by_key = {e.key: e for e in index}
        index = [by_key[k] for k in keys]
    view = TargetView(resolution)
    return np.stack([np.asarray(view.image(read_image(e))) for e in index])


@torch.inference_mode()
def encode_targets(codec, codec_name: str, shards: str | Path, split: str, out: str | Path, resolution: int,
                   batch_size: int = 32, num_workers: int = 2, device: str = "auto", rows_per_shard: int = 128,
                   rows_per_chunk: int = 16, progress: bool = True) -> dict[str, Any]:
    """Encode every image of ``split`` into ``out`` (a rowstore with ``latents`` and ``keys``)."""
    index = index_split(shards, split)
    n = len(index)
    dev = resolve_device(device)
    codec = codec.to(dev)
    probe = codec.encode(torch.zeros(1, 3, resolution, resolution, device=dev))
    shape = tuple(probe.shape[1:])
    attrs = {"codec": codec_name, "resolution": resolution, "split": split, "latent_shape": list(shape),
             "view": "central square, bicubic resize", "keys_digest": _keys_digest(index)}
    arrays = {"latents": (shape, "float16", 0), "keys": ((), "str", None)}
    group, resumed = rowstore.open_or_resume(out, n, arrays, rows_per_shard, rows_per_chunk, attrs)
    if not resumed:
        group["keys"][:] = np.array([e.key for e in index], dtype=object)
    batches = rowstore.pending_batches(group, batch_size)
    started = time.perf_counter()
    if batches:
        writer = rowstore.BlockWriter(group)
        for images, rows in shard_batches(index, TargetView(resolution), batches, num_workers, dev,
                                          f"targets {split}", progress):
            writer.add(rows, {"latents": codec.encode(images).to(torch.float16).cpu().numpy()})
    rowstore.finalize(out)
    return {"n_images": n, "seconds": time.perf_counter() - started, "latent_shape": list(shape)}


def _keys_digest(index) -> str:
    return hashlib.sha256("\n".join(e.key for e in index).encode()).hexdigest()
