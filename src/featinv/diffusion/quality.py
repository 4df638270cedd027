"""Quality figures of an unconditional base model, for its model card.

- FID between base-model samples and the training views, on a backbone's pooled features, every
  image through the same path (the diffusion resolution, the backbone's eval preprocessing).
- Nearest-training-image cosine: for each sample, the highest mean cosine per position between its
  feature map and any training view's map. The same figure for real held-out (val) images says what
  an image that is new but from the same photographs scores: samples far above it recall training
  crops, samples far below it are not photographs of this kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from featinv.backbones import create_backbone
from featinv.data.target_view import view_images
from featinv.devices import resolve_device
from featinv.diffusion.base import load_base
from featinv.diffusion.sample import sample_unconditional
from featinv.metrics import fid
from featinv.metrics.evaluate import backbone_outputs, nearest_by_cosine


def sample_base(base_dir: str | Path, n: int, prompt: str, scheduler: str, steps: int, guidance: float, seed: int,
                device: str = "auto", spacing: str = "leading") -> np.ndarray:
    """``n`` samples of the base model alone: (n, 3, R, R) uint8."""
    base = load_base(base_dir).to(resolve_device(device))
    return sample_unconditional(base, n, prompt, scheduler, steps, guidance, seed, spacing=spacing)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values))


def base_figures(samples: np.ndarray, shards: str | Path, backbone_name: str, weights: str | None = None,
                 batch_size: int = 64, device: str = "auto") -> dict[str, Any]:
    """FID against the train views and nearest-train cosine of ``samples`` and of the val images."""
    dev = resolve_device(device)
    resolution = samples.shape[-1]
    backbone = create_backbone(backbone_name, weights=weights)
    train = backbone_outputs(backbone, view_images(shards, "train", resolution).transpose(0, 3, 1, 2), batch_size, dev)
    val = backbone_outputs(backbone, view_images(shards, "val", resolution).transpose(0, 3, 1, 2), batch_size, dev)
    fake = backbone_outputs(backbone, samples, batch_size, dev)
    _, sample_nearest = nearest_by_cosine(fake["features"], train["features"])
    _, val_nearest = nearest_by_cosine(val["features"], train["features"])
    return {
        "backbone": backbone_name, "resolution": int(resolution), "n_samples": len(samples),
        "n_train_views": len(train["features"]), "n_val_images": len(val["features"]),
        "fid_samples_vs_train": fid.frechet_distance(train["pooled"], fake["pooled"]),
        "fid_val_vs_train": fid.frechet_distance(train["pooled"], val["pooled"]),
        "nearest_train_cosine_samples": _mean(sample_nearest),
        "nearest_train_cosine_val": _mean(val_nearest),
    }
