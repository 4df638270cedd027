"""Preview grids: what a person looks at to judge the base model and the reconstructions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from featinv import rowstore
from featinv.config import Diffusion, Sampling
from featinv.data.target_view import view_images
from featinv.devices import resolve_device
from featinv.plots import hwc, image_grid, spread_rows, to_uint8


def preview_samples(samples: str | Path, shards: str | Path, split: str, out_png: str | Path, n: int = 8) -> None:
    """Originals (the diffusion target view) in the top row, reconstructions below, one row per sample;
    ``n`` feature maps evenly spaced over the store (so over the classes)."""
    group = rowstore.open_complete(samples)
    rows_idx = spread_rows(group["keys"].shape[0], n)
    keys = [str(k) for k in group["keys"].get_orthogonal_selection((rows_idx,))]
    images = group["images"].get_orthogonal_selection((rows_idx,))
    originals = list(view_images(shards, split, images.shape[-1], keys))
    rows = [originals] + [[hwc(images[i, s]) for i in range(len(keys))] for s in range(images.shape[1])]
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows).save(out_png)


def preview_base(base_source: str, targets: str | Path, out_png: str | Path, diffusion: Diffusion,
                 sampling: Sampling, n: int = 8) -> None:
    """Top row: training targets; two rows below: samples of the base model alone (prompted, seeded)."""
    from featinv.diffusion.base import load_base
    from featinv.diffusion.sample import sample_unconditional

    base = load_base(base_source, diffusion.base.resolution)
    dev = resolve_device(diffusion.device)
    base.to(dev)
    store = rowstore.open_complete(targets)
    rows_idx = spread_rows(store["keys"].shape[0], n)
    real = base.codec.decode(torch.from_numpy(store["latents"].get_orthogonal_selection((rows_idx,)).astype(np.float32)).to(dev))
    fake_u8 = sample_unconditional(base, 2 * n, diffusion.prompt, sampling.scheduler, sampling.steps,
                                   sampling.guidance_scale, sampling.seed, key="base-preview",
                                   spacing=sampling.timestep_spacing)
    real_u8 = to_uint8(real)
    rows = [[hwc(x) for x in real_u8], [hwc(x) for x in fake_u8[:n]], [hwc(x) for x in fake_u8[n:]]]
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows).save(out_png)
