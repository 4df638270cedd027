"""Augmented views of a split: K square random resized crops (with horizontal flips) per image.

The official FeatInv code trains on RandomResizedCrop + flips, computing features and targets per
step. Here every view is a fixed, named crop of its image, so its feature map and its diffusion
target are computed once and cached like any other row. A view is a pure function of
(image key, view index, seed): extraction, target encoding and every reader see the same pixels.

Crops are square (aspect ratio 1), because the diffusion target and the backbone's centre crop are
square: a non-square crop would be cut differently by the two. View 0 is the image itself.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
import numpy as np
from PIL import Image

from featinv.config import DataViews


@dataclass(frozen=True)
class View:
    """View ``index`` of the image ``source_key``; drawn when the image is decoded (it needs its size)."""

    source_key: str
    index: int
    scale: tuple[float, float]
    flip: bool
    seed: int

    @property
    def key(self) -> str:
        return f"{self.source_key}@v{self.index}"

    def box(self, size: tuple[int, int]) -> tuple[tuple[int, int, int, int], bool]:
        """(pixel box, flipped) for an image of ``size`` (width, height): a square whose area is a
        uniform fraction in ``scale`` of the largest square that fits, at a uniform position, flipped
        with p = 0.5. View 0 is the whole image, unflipped."""
        width, height = size
        if self.index == 0:
            return (0, 0, width, height), False
        digest = int.from_bytes(hashlib.sha256(self.source_key.encode()).digest()[:8], "little")
        rng = np.random.default_rng([self.seed, self.index, digest])
        side = max(1, round(math.sqrt(rng.uniform(*self.scale)) * min(width, height)))
        x = int(rng.integers(0, width - side + 1))
        y = int(rng.integers(0, height - side + 1))
        flipped = bool(self.flip and rng.random() < 0.5)
        return (x, y, x + side, y + side), flipped

    def apply(self, img: Image.Image) -> Image.Image:
        box, flipped = self.box(img.size)
        if box != (0, 0, *img.size):
            img = img.crop(box)
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flipped else img


def views_of(key: str, count: int, scale: tuple[float, float], flip: bool, seed: int) -> list[View]:
    """The ``count`` views of one image (the keys of ``data.views``, as the manifest records them)."""
    return [View(key, k, (float(scale[0]), float(scale[1])), bool(flip), int(seed)) for k in range(count)]


def check_views(views: DataViews) -> None:
    lo, hi = views.scale
    if not (0 < lo <= hi <= 1):
        raise ValueError(f"data.views.scale must be 0 < low <= high <= 1, got {list(views.scale)}")
    if views.count < 1:
        raise ValueError(f"data.views.count must be at least 1, got {views.count}")
