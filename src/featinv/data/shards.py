"""Writing sources into webdataset tar shards plus a manifest, and reading them back by index.

Layout: ``<out>/<split>-NNNNNN.tar`` (image as ``jpg``/``png``, ``cls``, ``json`` extras, and
``masks.npz`` where the source has masks), ``<out>/manifest.json`` (count per split, class names,
sha256 per shard) and ``<out>/rejected.tsv`` (key and reason of every skipped input).

Shards are written under a ``.partial`` name and renamed when complete, and the manifest is
written last, so an interrupted run never leaves a shard set that looks complete.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from featinv.config import DataViews, NameNotFound
from featinv.data.images import BadImage, encode_png, normalise, to_rgb
from featinv.data.sources import Record, WebDatasetSource, member_bytes, split_shards, tar_images, tar_samples
from featinv.data.views import View, check_views, views_of
from featinv.fileio import atomic_write_text, sha256

log = logging.getLogger(__name__)


class ShardSink:
    """Writes samples to ``<split>-NNNNNN.tar`` shards of at most ``maxcount`` samples each."""

    def __init__(self, out_dir: Path, split: str, maxcount: int):
        self.out_dir, self.split, self.maxcount = out_dir, split, maxcount
        self.shards: list[dict[str, Any]] = []
        self._writer: wds.TarWriter | None = None
        self._count = 0

    def _open(self) -> wds.TarWriter:
        name = f"{self.split}-{len(self.shards):06d}.tar"
        self._path = self.out_dir / name
        self._partial = self.out_dir / (name + ".partial")
        # A fixed mtime makes shards byte-identical across runs (same sha256, DVC deduplicates).
        self._writer = wds.TarWriter(str(self._partial), encoder=False, mtime=0.0)
        self._count = 0
        return self._writer

    def _close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        os.replace(self._partial, self._path)
        self.shards.append({"name": self._path.name, "count": self._count, "sha256": sha256(self._path)})
        self._writer = None

    def write(self, sample: dict[str, bytes | str]) -> None:
        writer = self._open() if self._writer is None else self._writer
        writer.write(sample)
        self._count += 1
        if self._count >= self.maxcount:
            self._close()

    def close(self) -> list[dict[str, Any]]:
        self._close()
        return self.shards


def _sample(record: Record, image: bytes | Image.Image) -> dict[str, bytes | str]:
    """Encode one accepted record; raises BadImage for undecodable input."""
    if isinstance(image, Image.Image):
        data, ext = encode_png(to_rgb(image)), "png"
    else:
        data, ext, _ = normalise(image)
    extras = {k: v for k, v in record.extras.items() if not callable(v)}
    sample: dict[str, bytes | str] = {
        "__key__": record.key,
        ext: data,
        "cls": str(record.cls).encode(),
        "json": json.dumps(extras, sort_keys=True).encode(),
    }
    for name, fn in record.extras.items():
        if callable(fn):
            sample[f"{name}.npz"] = fn()
    return sample


def _decoded(record: Record) -> dict[str, bytes | str] | str:
    """``_sample`` of a record, or the reason it is rejected."""
    try:
        return _sample(record, record.load())
    except BadImage as exc:
        return str(exc)
    except OSError as exc:
        return f"unreadable: {exc}"


def _accepted(records: Iterable[Record], per_class: int | None, rejected: list, split: str, desc: str,
              threads: int = 1):
    """Yield (record, sample) for the first ``per_class`` decodable records of each class, in source
    order. With ``threads`` > 1, records are read, decoded and encoded on that many threads (PIL and
    zlib work outside the GIL), ``4 * threads`` ahead of the writer; what is accepted, and in which
    order, is the same as on one thread."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    taken: dict[int, int] = {}
    full = lambda record: per_class is not None and taken.get(record.cls, 0) >= per_class  # noqa: E731
    with ThreadPoolExecutor(max(1, threads)) as pool:
        pending: deque = deque()

        def drain(keep: int):
            while len(pending) > keep:
                record, future = pending.popleft()
                if full(record):  # filled by records before it while it was decoded
                    continue
                sample = future.result()
                if isinstance(sample, str):
                    rejected.append((split, record.key, sample))
                    continue
                taken[record.cls] = taken.get(record.cls, 0) + 1
                yield record, sample

        for record in tqdm(records, desc=desc, unit="img", mininterval=2.0):
            if full(record):
                continue
            pending.append((record, pool.submit(_decoded, record)))
            yield from drain(4 * max(1, threads))
        yield from drain(0)


def write_split(records: Iterable[Record], out_dir: Path, split: str, per_class: int | None,
                maxcount: int, rejected: list, threads: int = 1) -> dict[str, Any]:
    sink = ShardSink(out_dir, split, maxcount)
    for _, sample in _accepted(records, per_class, rejected, split, f"shards {split}", threads):
        sink.write(sample)
    shards = sink.close()
    return {"count": sum(s["count"] for s in shards), "shards": shards}


def index_in_place(source: WebDatasetSource, split: str, rejected: list) -> dict[str, Any]:
    """Use existing webdataset shards as they are: every image is decoded once to find bad ones,
    which are listed under ``excluded`` and skipped by readers."""
    before = len(rejected)
    accepted = {r.key for r, _ in _accepted(source.records(split), None, rejected, split, f"check {split}")}
    excluded = sorted(key for s, key, _ in rejected[before:])
    shards = []
    for path in split_shards(source.root, split):
        count = sum(1 for key, _ in tar_samples(path) if key in accepted)
        shards.append({"path": str(path.resolve()), "name": path.name, "count": count, "sha256": sha256(path)})
    return {"count": len(accepted), "shards": shards, "excluded": excluded, "in_place": True}


def build(source, out_dir: str | Path, dataset: str, splits: list[str], per_class: dict[str, int | None],
          maxcount: int, views: DataViews | None = None, threads: int = 1) -> dict[str, Any]:
    """Write every split of ``source`` to shards under ``out_dir`` (images decoded on ``threads``
    threads; the shards are the same for any number); return the manifest. ``views`` (``data.views``)
    is recorded for the splits it names: their index lists every view of every image."""
    if views is not None:
        check_views(views)
        unknown = sorted(set(views.splits) - set(splits))
        if unknown:
            raise ValueError(f"data.views.splits {unknown} are not among data.splits {splits}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.json"
    manifest_path.unlink(missing_ok=True)  # the manifest marks completeness: gone until we finish
    for stale in out_dir.glob("*.partial"):
        stale.unlink()
    rejected: list[tuple[str, str, str]] = []
    result: dict[str, Any] = {}
    for split in splits:
        limit = per_class.get(split)
        if isinstance(source, WebDatasetSource) and limit is None:
            entry = index_in_place(source, split, rejected)
        else:
            entry = write_split(source.records(split), out_dir, split, limit, maxcount, rejected, threads)
        produced = {s["name"] for s in entry["shards"]}
        for old in out_dir.glob(f"{split}-*.tar"):
            if old.name not in produced or entry.get("in_place"):
                old.unlink()
        n_rejected = sum(1 for s, _, _ in rejected if s == split)
        if entry["count"] == 0:
            raise ValueError(
                f"dataset '{dataset}', split '{split}': no images left ({n_rejected} rejected, see {out_dir / 'rejected.tsv'})"
            )
        log.info("split %s: %d images in %d shards, %d rejected", split, entry["count"], len(entry["shards"]), n_rejected)
        if views is not None and split in views.splits and views.count > 1:
            entry["views"] = {"count": views.count, "scale": list(views.scale), "flip": views.flip, "seed": views.seed}
        result[split] = entry
    lines = ["split\tkey\treason"] + [f"{s}\t{k}\t{r}" for s, k, r in rejected]
    atomic_write_text(out_dir / "rejected.tsv", "\n".join(lines) + "\n")
    if rejected:
        log.warning("%d images rejected, listed in %s", len(rejected), out_dir / "rejected.tsv")
    manifest = {
        "dataset": dataset,
        "source": type(source).__name__,
        "label_space": source.label_space,
        "classes": source.classes(),
        "imagenet_classes": getattr(source, "imagenet_classes", lambda: None)(),
        "per_class": {s: per_class.get(s) for s in splits},
        "rejected": len(rejected),
        "splits": result,
    }
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1) + "\n")
    return manifest


# --------------------------------------------------------------------------------------------
# reading


def load_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: build the shards first (featinv build-shards)")
    return json.loads(path.read_text())


@dataclass(frozen=True)
class IndexEntry:
    key: str
    cls: int
    shard: str
    offset: int
    size: int
    view: View | None = None  # an augmented view of the stored image (its key is the view's)


def index_split(manifest_path: str | Path, split: str, verify: bool = False, views: bool = True) -> list[IndexEntry]:
    """One entry per sample of ``split`` in manifest order: where its image bytes lie in which tar.
    Where the manifest records views for the split (``data.views``), each image is followed by its
    views (keys ``<key>@v<k>``, view 0 the image itself) unless ``views`` is False."""
    manifest_path = Path(manifest_path)
    manifest = load_manifest(manifest_path)
    if split not in manifest["splits"]:
        raise NameNotFound(f"split '{split}' not in {manifest_path} (has {sorted(manifest['splits'])})")
    entry = manifest["splits"][split]
    excluded = set(entry.get("excluded", []))
    base = manifest_path.parent if manifest_path.is_file() else manifest_path
    index: list[IndexEntry] = []
    for shard in entry["shards"]:
        path = Path(shard.get("path") or base / shard["name"])
        if verify and sha256(path) != shard["sha256"]:
            raise ValueError(f"shard {path} does not match the sha256 in its manifest: rebuild the shards")
        rows = []
        try:
            for key, cls, info in tar_images(path):
                if info is not None and key not in excluded:
                    rows.append(IndexEntry(key, cls, str(path), info.offset_data, info.size))
        except tarfile.ReadError as exc:
            raise ValueError(f"shard {path} is not a readable tar ({exc}): rebuild the shards") from None
        if len(rows) != shard["count"]:
            raise ValueError(f"shard {path} holds {len(rows)} samples, its manifest says {shard['count']}: rebuild the shards")
        index.extend(rows)
    spec = entry.get("views")
    if views and spec:
        index = [IndexEntry(v.key, e.cls, e.shard, e.offset, e.size, v) for e in index for v in views_of(e.key, **spec)]
    return index


def keys_digest(index: list[IndexEntry]) -> str:
    """The identity of an index's images, in order."""
    return sha256("\n".join(e.key for e in index).encode())


def read_image(entry: IndexEntry) -> Image.Image:
    with open(entry.shard, "rb") as fh:
        fh.seek(entry.offset)
        data = fh.read(entry.size)
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        rgb = to_rgb(img)
    return entry.view.apply(rgb) if entry.view is not None else rgb


def read_masks(entries: list[IndexEntry]) -> list[tuple[np.ndarray, list[int]] | None]:
    """Each entry's object masks, (objects, H, W) bool from its ``masks.npz`` member, with each
    object's category id (its ``json`` extras' ``category_ids``), or None where the sample has no
    masks (sources without them). Reads every shard once."""
    wanted: dict[str, dict[str, int]] = {}
    for i, entry in enumerate(entries):
        wanted.setdefault(entry.shard, {})[entry.key] = i
    out: list[tuple[np.ndarray, list[int]] | None] = [None] * len(entries)
    for shard, rows in wanted.items():
        with tarfile.open(shard, "r:") as tar:
            for key, members in tar_samples(Path(shard)):
                if key in rows and "masks.npz" in members:
                    with np.load(io.BytesIO(member_bytes(tar, members["masks.npz"]))) as npz:
                        masks = npz["masks"].astype(bool)
                    extras = json.loads(member_bytes(tar, members["json"])) if "json" in members else {}
                    categories = [int(c) for c in extras.get("category_ids", [-1] * len(masks))]
                    if len(categories) != len(masks):
                        raise ValueError(f"shard {shard}, sample {key}: {len(masks)} masks but "
                                         f"{len(categories)} category ids")
                    out[rows[key]] = (masks, categories)
    return out
