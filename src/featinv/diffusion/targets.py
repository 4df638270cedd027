"""Cached diffusion targets: each image of a split, as the diffusion model sees it, encoded once.

The target view is the central square of the image resized to the diffusion resolution. Every
backbone's eval preprocessing (resize, centre crop) sees the centre of that same square, so the
feature map and the target describe the same content, and a reconstruction passed through the
backbone's own preprocessing is cropped the way the original was.

What is cached, and the trade-off: the official FeatInv code draws a fresh random resized crop and
flip per step and therefore runs the backbone and the VAE on every step. Here training reads feature
maps from the feature store and targets from this cache, so neither runs per step (an order of
magnitude cheaper per step at paper scale), at the price of a fixed set of views per image: the
image itself and, for the splits in ``data.views``, K augmented crops (``featinv.data.views``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featinv import rowstore
from featinv.config import Diffusion
from featinv.data.batches import shard_batches
from featinv.data.shards import index_split, keys_digest
from featinv.data.target_view import TargetView
from featinv.devices import resolve_device

log = logging.getLogger(__name__)


def target_codec(diffusion: Diffusion):
    """(codec, name) the targets are encoded with: the embedded base model's pixel space (``patch<p>``)
    when the base is trained here, else the VAE of the pretrained base (``vae:<source>``)."""
    from featinv.diffusion.base import load_base
    from featinv.diffusion.codec import PatchCodec

    base = diffusion.base
    if base.source == "train":
        return PatchCodec(base.patch), f"patch{base.patch}"
    return load_base(base.source, base.resolution).codec, f"vae:{base.source}"


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
             "view": "central square, bicubic resize", "keys_digest": keys_digest(index)}
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

