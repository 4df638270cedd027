"""Batched, resumable extraction of a split's spatial feature maps into a zarr store.

Work is done in row blocks of one zarr shard each: a block is computed, written whole and marked
done, so memory stays bounded by one block whatever the dataset size, and an interrupted run
resumes at the first block not done. The rows follow the shard manifest's order.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featinv import __version__, rowstore
from featinv.backbones import Backbone
from featinv.distributed import processes
from featinv.data.batches import shard_batches
from featinv.data.shards import index_split, load_manifest
from featinv.devices import resolve_device
from featinv.features import store
from featinv.fileio import sha256

log = logging.getLogger(__name__)


def _manifest_digest(manifest: dict[str, Any], split: str) -> str:
    entry = manifest["splits"][split]
    return sha256(json.dumps(entry, sort_keys=True).encode())


def _store_attrs(backbone: Backbone, manifest: dict, split: str, n: int, topk: int, view: str) -> dict[str, Any]:
    return {
        **backbone.describe(),
        "view": view,
        "dataset": manifest["dataset"],
        "split": split,
        "label_space": manifest["label_space"],
        "imagenet_classes": manifest.get("imagenet_classes"),
        "n": n,
        "topk": topk,
        "dtype": store.FEATURE_DTYPE,
        "manifest_sha256": _manifest_digest(manifest, split),
        "featinv_version": __version__,
        "torch_version": torch.__version__,
    }


@torch.inference_mode()
def extract(backbone: Backbone, shards: str | Path, split: str, out: str | Path, batch_size: int = 32,
            num_workers: int = 2, device: str = "auto", rows_per_shard: int = 128, rows_per_chunk: int = 16,
            topk: int = 5, progress: bool = True, limit: int = 0, view: str = "eval_transform") -> dict[str, Any]:
    """Extract ``split`` of the shards at ``shards`` into the store ``out``; return a summary (of this
    process's share, when launched as several processes).

    ``view`` (``features.view``): what the backbone sees of each image, its eval transform or the
    diffusion target's region resized (:meth:`Preprocessing.transform`). ``limit`` > 0 keeps only
    the first ``limit`` rows (benchmarks)."""
    manifest_path = Path(shards) / "manifest.json" if Path(shards).is_dir() else Path(shards)
    manifest = load_manifest(manifest_path)
    index = index_split(manifest_path, split)
    if limit:
        index = index[:limit]
    n = len(index)
    dev = resolve_device(device)
    procs = processes(dev)
    backbone = backbone.to(dev)
    attrs = _store_attrs(backbone, manifest, split, n, topk, view)
    group, resumed = rowstore.open_shared(out, n, store.arrays(backbone.fmap_shape, topk), rows_per_shard,
                                          rows_per_chunk, attrs, procs)
    if not resumed:
        group["labels"][:] = np.array([e.cls for e in index], dtype=np.int32)
        group["keys"][:] = np.array([e.key for e in index], dtype=object)
    batches = rowstore.pending_batches(group, batch_size, procs)
    n_rows = sum(len(batch) for batch in batches)
    log.info("%s %s: %d rows, %d to do (process %d of %d)", backbone.name, split, n, n_rows, procs.rank + 1,
             procs.world)

    started = time.perf_counter()
    if batches:
        writer = rowstore.BlockWriter(group)
        for images, rows in shard_batches(index, backbone.preprocessing.transform(view), batches, num_workers, dev,
                                          f"{backbone.name} {split}", progress and procs.is_main):
            fmap, logits = backbone.outputs(images)
            probs = logits.float().softmax(-1)
            top_p, top_i = probs.topk(min(topk, probs.shape[-1]), dim=-1)
            writer.add(rows, {
                "features": fmap.to(torch.float16).cpu().numpy(),
                "pooled": backbone.pooled(fmap).to(torch.float16).cpu().numpy(),
                "topk_indices": top_i.int().cpu().numpy(),
                "topk_probs": top_p.cpu().numpy(),
            })
    elapsed = time.perf_counter() - started
    rowstore.finish_shared(out, procs)
    return {"n_images": n, "extracted": n_rows, "seconds": elapsed,
            "images_per_second": n_rows / elapsed if n_rows and elapsed > 0 else None,
            "process": procs.rank, "processes": procs.world}


def accuracy_report(store_path: str | Path) -> dict[str, Any]:
    """Top-1/top-5 accuracy of the stored predictions against the labels, where labels are the
    backbone's classes (ImageNet-1k label space and a 1000-way head); otherwise null with a reason."""
    group = rowstore.open_complete(store_path)
    attrs = dict(group.attrs)
    labels = group["labels"][:]
    top = group["topk_indices"][:]
    num_classes = int(attrs["num_classes"])
    report: dict[str, Any] = {
        "backbone": attrs["backbone"],
        "dataset": attrs["dataset"],
        "split": attrs["split"],
        "n_images": int(len(labels)),
        "label_space": attrs["label_space"],
        "weights_source": attrs["weights_source"],
        "fmap_shape": attrs["fmap_shape"],
    }
    mapping = attrs.get("imagenet_classes") or []
    if attrs["label_space"] == "imagenet-1k" and num_classes == 1000:
        report["top1_accuracy"] = float(np.mean(top[:, 0] == labels))
        report["top5_accuracy"] = float(np.mean((top[:, :5] == labels[:, None]).any(axis=1)))
    elif num_classes == 1000 and any(c is not None for c in mapping):
        # Classes with a known ImageNet-1k class (the demo's foolbox photos): accuracy on their images.
        imagenet = np.array([-1 if mapping[label] is None else mapping[label] for label in labels])
        known = imagenet >= 0
        report["top1_accuracy"] = float(np.mean(top[known, 0] == imagenet[known]))
        report["top5_accuracy"] = float(np.mean((top[known, :5] == imagenet[known, None]).any(axis=1)))
        report["n_imagenet_labelled"] = int(known.sum())
        report["accuracy_note"] = (f"on the {int(known.sum())} images whose '{attrs['label_space']}' class has a "
                                   "known ImageNet-1k class (manifest imagenet_classes)")
    else:
        report["top1_accuracy"] = report["top5_accuracy"] = None
        report["accuracy_note"] = (
            f"labels are in label space '{attrs['label_space']}', not the backbone's {num_classes} classes"
        )
    return report
