"""Training views drawn online (``controlnet.train.augment.mode: online``), as the official FeatInv
code trains: every step takes, of each image of its batch, a random resized crop (area ``scale``,
aspect ``ratio``, as torchvision's ``RandomResizedCrop``) resized to a ``size`` px square, flipped
horizontally and vertically with p = 0.5 each. The backbone sees that square at its input size (its
map is the hint) and the codec encodes the same square at the diffusion resolution (the target), so
both describe the same pixels. The draws are a pure function of (seed, step, row): a run stopped at
any point resumes exactly, and every process of a multi-process run draws the same views.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from featinv.backbones import Backbone
from featinv.config import TrainAugment
from featinv.data.shards import IndexEntry, read_image
from featinv.data.target_view import TargetView


def crop_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
             rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A random resized crop's (left, top, right, bottom), drawn as torchvision's ``RandomResizedCrop``
    draws it (ten tries at a random area and log-uniform aspect, else the central crop of the
    clamped aspect), from ``rng``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def online_view(img: Image.Image, augment: TrainAugment, seed: int, step: int, row: int) -> Image.Image:
    """The ``size`` px square of ``img`` that step ``step`` trains on for row ``row``."""
    rng = np.random.default_rng([seed, step, row])
    box = crop_box(*img.size, (augment.scale[0], augment.scale[1]), (augment.ratio[0], augment.ratio[1]), rng)
    view = img.crop(box).resize((augment.size, augment.size), Image.Resampling.BICUBIC)
    if augment.hflip and rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if augment.vflip and rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return view


class OnlineViews:
    """Training rows computed per step: ``get(rows, step)`` gives the batch's targets (``latents``)
    and hints (``cond``: the backbone's map, or its pooled vector for the pooled variant)."""

    def __init__(self, index: list[IndexEntry], backbone: Backbone, codec, resolution: int, variant: str,
                 augment: TrainAugment, seed: int):
        self.index, self.backbone, self.codec = index, backbone, codec
        self.n = len(index)
        self.augment, self.seed, self.variant = augment, seed, variant
        self.device = torch.device("cpu")
        self.to_backbone = backbone.preprocessing.transform("resize")
        self.to_target = TargetView(resolution)

    def to(self, device: torch.device) -> "OnlineViews":
        """Run the backbone and the codec on ``device`` (the training process's)."""
        self.device = torch.device(device)
        self.backbone.to(self.device)
        self.codec.to(self.device)
        return self

    @torch.no_grad()
    def get(self, rows: np.ndarray, step: int) -> dict[str, torch.Tensor]:
        views = [online_view(read_image(self.index[int(r)]), self.augment, self.seed, step, int(r)) for r in rows]
        x = torch.stack([self.to_backbone(v) for v in views]).to(self.device)
        fmap = self.backbone.spatial(x).float()
        cond = self.backbone.pooled(fmap) if self.variant == "pooled" else fmap
        latents = self.codec.encode(torch.stack([self.to_target(v) for v in views]).to(self.device))
        return {"latents": latents.float().cpu(), "cond": cond.cpu()}
