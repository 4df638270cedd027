"""``featinv bench-extract``: extraction throughput, peak memory and bytes on disk per image."""

from __future__ import annotations

import resource
import tempfile
from pathlib import Path

import torch

from featinv.backbones import create_backbone
from featinv.features import store
from featinv.devices import resolve_device
from featinv.features.extract import extract


def bench_extract(backbone_name: str, shards: str, split: str, batch_size: int, device: str,
                  num_workers: int, limit: int) -> dict:
    dev = resolve_device(device)
    backbone = create_backbone(backbone_name)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.zarr"
        summary = extract(backbone, shards, split, out, batch_size=batch_size, num_workers=num_workers,
                          device=str(dev), limit=limit, progress=False)
        size = store.bytes_on_disk(out)
    result = {
        "backbone": backbone_name,
        "device": str(dev),
        "batch_size": batch_size,
        "num_workers": num_workers,
        "n_images": summary["n_images"],
        "images_per_second": summary["images_per_second"],
        "seconds": summary["seconds"],
        "bytes_per_image": size / summary["n_images"],
        "fmap_shape": list(backbone.fmap_shape),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if dev.type == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
    for key, value in result.items():
        print(f"{key:>18}: {value:.2f}" if isinstance(value, float) else f"{key:>18}: {value}")
    return result
