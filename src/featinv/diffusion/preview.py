"""Preview grids: what a person looks at to judge the base model and the reconstructions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from featinv import rowstore


def image_grid(rows: list[list[np.ndarray]], pad: int = 2) -> Image.Image:
    """A grid of HWC uint8 images, one list per grid row, on white (None leaves a cell blank)."""
    h, w = next(img for row in rows for img in row if img is not None).shape[:2]
    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            if img is None:
                continue
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = img
    return Image.fromarray(canvas)


def spread_rows(total: int, n: int) -> np.ndarray:
    """Up to ``n`` row indices evenly spaced over ``total`` rows (so over the classes, which are contiguous)."""
    return np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(int))


def _hwc(chw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(chw.transpose(1, 2, 0))


def preview_samples(samples: str | Path, shards: str | Path, split: str, out_png: str | Path, n: int = 8) -> None:
    """Originals (the diffusion target view) in the top row, reconstructions below, one row per sample;
    ``n`` feature maps evenly spaced over the store (so over the classes)."""
    from featinv.diffusion.targets import view_images

    group = rowstore.open_complete(samples)
    rows_idx = spread_rows(group["keys"].shape[0], n)
    keys = [str(k) for k in group["keys"].get_orthogonal_selection((rows_idx,))]
    images = group["images"].get_orthogonal_selection((rows_idx,))
    originals = list(view_images(shards, split, images.shape[-1], keys))
    rows = [originals] + [[_hwc(images[i, s]) for i in range(len(keys))] for s in range(images.shape[1])]
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows).save(out_png)


def preview_base(base_source: str, targets: str | Path, out_png: str | Path, diffusion: dict[str, Any],
                 sampling: dict[str, Any], n: int = 8) -> None:
    """Top row: training targets; two rows below: samples of the base model alone (prompted, seeded)."""
    from featinv.diffusion.base import load_base
    from featinv.diffusion.sample import sample_unconditional, to_uint8
    from featinv.features.extract import resolve_device

    base = load_base(base_source, diffusion["base"]["resolution"])
    dev = resolve_device(diffusion["device"])
    base.to(dev)
    store = rowstore.open_complete(targets)
    rows_idx = spread_rows(store["keys"].shape[0], n)
    real = base.codec.decode(torch.from_numpy(store["latents"].get_orthogonal_selection((rows_idx,)).astype(np.float32)).to(dev))
    fake_u8 = sample_unconditional(base, 2 * n, diffusion["prompt"], sampling["scheduler"], sampling["steps"],
                                   sampling["guidance_scale"], sampling["seed"], key="base-preview")
    real_u8 = to_uint8(real)
    rows = [[_hwc(x) for x in real_u8], [_hwc(x) for x in fake_u8[:n]], [_hwc(x) for x in fake_u8[n:]]]
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows).save(out_png)
