"""The target view: an image as the diffusion model (and the modular inverses) see it, the largest
central square (or box of a given aspect ratio) resized to the model's resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featinv.data.shards import index_split, read_image


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
