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
import torch

from featinv.backbones import create_backbone
from featinv.data.target_view import view_images
from featinv.devices import resolve_device
from featinv.diffusion.base import load_base
from featinv.diffusion.sample import denoise, initial_noise, make_scheduler, sample_unconditional
from featinv.metrics import fid
from featinv.metrics.evaluate import backbone_outputs, nearest_by_cosine
from featinv.plots import to_uint8


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


def ceiling_probe(base_dir: str | Path, images: np.ndarray, backbone_name: str, starts: tuple[int, ...] = (900, 600, 300),
                  prompt: str = "", scheduler: str = "ddim", steps: int = 10, guidance: float = 1.75, seed: int = 100,
                  spacing: str = "trailing", weights: str | None = None, batch_size: int = 64,
                  device: str = "auto") -> list[dict[str, Any]]:
    """Per start step: own and mismatched cosine (and their difference) of ``images`` ((N, 3, R, R)
    uint8 at the base's resolution) noised to the schedule's first step <= start, finished by the base."""
    from featinv.metrics.similarity import cosine_per_position

    dev = resolve_device(device)
    base = load_base(base_dir).to(dev)
    backbone = create_backbone(backbone_name, weights=weights)
    real = backbone_outputs(backbone, images, batch_size, dev)["features"]
    other = np.roll(real, len(real) // 2, axis=0)
    text = base.prompt_embeddings(prompt).to(dev)
    x0 = torch.from_numpy(images).float().div(127.5).sub(1.0)
    rows = []
    for start_t in starts:
        out = []
        for lo in range(0, len(images), batch_size):
            keys = [f"probe-{i}" for i in range(lo, min(len(images), lo + batch_size))]
            noise = initial_noise(keys, [0] * len(keys), seed, base.latent_shape).to(dev)
            sched = make_scheduler(scheduler, base, spacing)
            start = base.codec.encode(x0[lo : lo + len(keys)].to(dev))
            out.append(to_uint8(denoise(base, None, None, noise, text, sched, steps, guidance, 1.0,
                                        start=start, start_t=start_t)))
        fake = backbone_outputs(backbone, np.concatenate(out), batch_size, dev)["features"]
        own, mismatched = _mean(cosine_per_position(real, fake)), _mean(cosine_per_position(other, fake))
        rows.append({"start_t": int(start_t), "own": own, "mismatched": mismatched, "margin": own - mismatched})
    return rows
