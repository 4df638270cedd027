"""Dataset sources. Each yields :class:`Record`s per split, classes sorted, keys sorted within a class.

Sources are registered by name (``data.source`` in params.yaml):

- ``demo``: real photographs shipped inside PyPI wheels (scikit-image, scikit-learn, matplotlib, and
  foolbox's 20 ImageNet validation images), cut into deterministic square crops. ``cls`` is the index
  of the source photo; ``manifest.imagenet_classes`` gives each photo's ImageNet class where known. Train crops come
  from the left part of each photo and val crops from the right-hand strip, so the splits never
  share pixels.
- ``imagefolder``: ``<root>/<split>/<class>/<image>``. WordNet-synset folder names follow the
  ImageNet-1k class order, other names are sorted.
- ``webdataset``: existing tar shards ``<root>/*<split>-*.tar`` with an image and ``cls`` per sample.
- ``coco``: COCO 2017 images and instances JSON; records carry boxes, category ids and masks.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from featinv.config import Data, plain

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}
SYNSET = re.compile(r"^n\d{8}$")


@dataclass
class Record:
    """One source sample: ``load()`` returns encoded bytes or a PIL image."""

    key: str
    cls: int
    load: Callable[[], bytes | Image.Image]
    extras: dict[str, Any] = field(default_factory=dict)


def safe_key(*parts: str) -> str:
    """A webdataset key: '/'-joined parts without dots (webdataset splits key and extension at a dot)."""
    return "/".join(re.sub(r"[^A-Za-z0-9_\-]", "_", p) for p in parts)


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in the standard class-index order."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_names())


def class_order(names: list[str]) -> tuple[list[str], str]:
    """Class names in index order and the label space they define."""
    if names and all(SYNSET.match(n) for n in names):
        synsets = imagenet_synsets()
        unknown = sorted(set(names) - set(synsets))
        if unknown:
            raise ValueError(f"class folders {unknown[:5]} look like WordNet ids but are not ImageNet-1k classes")
        return synsets, "imagenet-1k"
    return sorted(names), "folder"


# --------------------------------------------------------------------------------------------
# demo: crops of real photographs that ship in wheels


def _pkg_file(package: str, *parts: str) -> Path:
    """A file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package '{package}' is not installed (pip install {package})")
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


@dataclass(frozen=True)
class DemoPhoto:
    package: str
    parts: tuple[str, ...]
    imagenet_class: int | None = None  # ImageNet-1k class index, where the wheel states it


# foolbox 3.3.4 ships 20 ImageNet validation images, the class index in the file name (imagenet_NN_<class>.jpg).
FOOLBOX_IMAGENET = ((0, 243), (1, 559), (2, 438), (3, 990), (4, 949), (5, 853), (6, 609), (7, 609), (8, 915),
                    (9, 455), (10, 541), (11, 630), (12, 741), (13, 471), (14, 129), (15, 99), (16, 251), (17, 22),
                    (18, 317), (19, 305))

DEMO_PHOTOS: dict[str, DemoPhoto] = {
    "astronaut": DemoPhoto("skimage", ("data", "astronaut.png")),
    "brick": DemoPhoto("skimage", ("data", "brick.png")),
    "chelsea": DemoPhoto("skimage", ("data", "chelsea.png")),
    "china": DemoPhoto("sklearn", ("datasets", "images", "china.jpg")),
    "coffee": DemoPhoto("skimage", ("data", "coffee.png")),
    "flower": DemoPhoto("sklearn", ("datasets", "images", "flower.jpg")),
    "grace_hopper": DemoPhoto("matplotlib", ("mpl-data", "sample_data", "grace_hopper.jpg")),
    "grass": DemoPhoto("skimage", ("data", "grass.png")),
    "gravel": DemoPhoto("skimage", ("data", "gravel.png")),
    "hubble_deep_field": DemoPhoto("skimage", ("data", "hubble_deep_field.jpg")),
    "immunohistochemistry": DemoPhoto("skimage", ("data", "ihc.png")),
    "motorcycle": DemoPhoto("skimage", ("data", "motorcycle_left.png")),
    "retina": DemoPhoto("skimage", ("data", "retina.jpg")),
    "rocket": DemoPhoto("skimage", ("data", "rocket.jpg")),
    **{f"imagenet_{i:02d}_{c}": DemoPhoto("foolbox", ("data", f"imagenet_{i:02d}_{c}.jpg"), c)
       for i, c in FOOLBOX_IMAGENET},
}


class DemoSource:
    """Deterministic square crops of the demo photographs (see module docstring)."""

    label_space = "demo-photo"

    def __init__(self, image_size: int, train_crops: int, val_crops: int, val_fraction: float, seed: int,
                 photos: list[str] | None = None):
        self.image_size = image_size
        self.crops = {"train": train_crops, "val": val_crops}
        self.val_fraction = val_fraction
        self.seed = seed
        unknown = sorted(set(photos or []) - set(DEMO_PHOTOS))
        if unknown:
            raise ValueError(f"data.demo.photos: unknown photo(s) {unknown} (known: {', '.join(sorted(DEMO_PHOTOS))})")
        self.photos = sorted(photos) if photos else sorted(DEMO_PHOTOS)

    def classes(self) -> list[str]:
        return self.photos

    def imagenet_classes(self) -> list[int | None]:
        """Per class (photo), its ImageNet-1k class index where the wheel states it, else None."""
        return [DEMO_PHOTOS[name].imagenet_class for name in self.classes()]

    @staticmethod
    def photo(name: str) -> Image.Image:
        spec = DEMO_PHOTOS[name]
        path = _pkg_file(spec.package, *spec.parts)
        if not path.exists():
            raise FileNotFoundError(f"demo photo '{name}' not found at {path}; reinstall the '{spec.package}' wheel")
        with Image.open(path) as img:
            return img.convert("RGB")

    def region(self, size: tuple[int, int], split: str) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the split's region: val is the right-hand strip."""
        width, height = size
        cut = int(round(width * (1.0 - self.val_fraction)))
        if split == "train":
            return 0, 0, cut, height
        if split == "val":
            return cut, 0, width, height
        raise ValueError(f"demo source has splits 'train' and 'val', not '{split}'")

    def crop_boxes(self, name: str, size: tuple[int, int], split: str) -> list[tuple[int, int, int, int]]:
        left, top, right, bottom = self.region(size, split)
        max_side = min(right - left, bottom - top)
        index = self.classes().index(name)
        rng = np.random.default_rng([self.seed, index, 0 if split == "train" else 1])
        boxes = []
        for _ in range(self.crops[split]):
            side = int(rng.integers(max(16, max_side // 2), max_side + 1))
            x = left + int(rng.integers(0, right - left - side + 1))
            y = top + int(rng.integers(0, bottom - top - side + 1))
            boxes.append((x, y, x + side, y + side))
        return boxes

    def records(self, split: str) -> Iterator[Record]:
        for cls, name in enumerate(self.classes()):
            photo = self.photo(name)
            for i, box in enumerate(self.crop_boxes(name, photo.size, split)):
                crop = lambda box=box, photo=photo: photo.crop(box).resize(
                    (self.image_size, self.image_size), Image.Resampling.BICUBIC
                )
                yield Record(safe_key(name, f"{split}_{i:04d}"), cls, crop, {"photo": name, "box": list(box)})


# --------------------------------------------------------------------------------------------
# imagefolder


class ImageFolderSource:
    """``<root>/<split>/<class>/<image>``, files sorted by name within each class."""

    def __init__(self, root: str | Path, splits: list[str]):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"imagefolder root {self.root} does not exist (set data.root)")
        names = set()
        for split in splits:
            split_dir = self.root / split
            if not split_dir.is_dir():
                raise FileNotFoundError(f"imagefolder split directory {split_dir} does not exist")
            names |= {p.name for p in split_dir.iterdir() if p.is_dir()}
        self._classes, self.label_space = class_order(sorted(names))

    def classes(self) -> list[str]:
        return self._classes

    def records(self, split: str) -> Iterator[Record]:
        split_dir = self.root / split
        present = {p.name for p in split_dir.iterdir() if p.is_dir()}
        for cls, name in enumerate(self._classes):
            if name not in present:
                continue
            files = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            for path in files:
                yield Record(safe_key(name, path.stem), cls, path.read_bytes, {"path": str(path)})


# --------------------------------------------------------------------------------------------
# webdataset


def split_shards(root: str | Path, split: str) -> list[Path]:
    """Existing shards of a split: ``<root>/*<split>-*.tar``, sorted."""
    shards = sorted(Path(root).glob(f"*{split}-*.tar"))
    if not shards:
        raise FileNotFoundError(f"no webdataset shards matching {Path(root) / f'*{split}-*.tar'}")
    return shards


def member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """The content of a regular file ``member`` of ``tar`` (``tar_samples`` yields only those)."""
    fh = tar.extractfile(member)
    if fh is None:
        raise ValueError(f"tar member {member.name} is not a regular file")
    return fh.read()


def tar_samples(path: Path) -> Iterator[tuple[str, dict[str, tarfile.TarInfo]]]:
    """Group the members of a webdataset tar by key, in file order."""
    key, members = None, {}
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            base = info.name.rsplit("/", 1)
            stem, _, ext = base[-1].partition(".")
            this = (base[0] + "/" + stem) if len(base) == 2 else stem
            if this != key and key is not None:
                yield key, members
                members = {}
            key = this
            members[ext] = info
        if key is not None:
            yield key, members


IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def tar_images(shard: Path) -> Iterator[tuple[str, int, tarfile.TarInfo | None]]:
    """(key, class index or -1, the image member or None) of each sample of a tar shard, in order."""
    with tarfile.open(shard, "r:") as tar:
        for key, members in tar_samples(shard):
            ext = next((e for e in IMAGE_EXTS if e in members), None)
            cls = int(member_bytes(tar, members["cls"])) if "cls" in members else -1
            yield key, cls, members[ext] if ext else None


class WebDatasetSource:
    """Existing shards with an image (``jpg``/``jpeg``/``png``/``webp``) and ``cls`` per sample.

    Class names come from ``<root>/classes.txt`` (one per line, in index order) when present.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        names_file = self.root / "classes.txt"
        if names_file.exists():
            names = [n.strip() for n in names_file.read_text().splitlines() if n.strip()]
            if names == imagenet_synsets():
                self._classes, self.label_space = names, "imagenet-1k"
            else:
                self._classes, self.label_space = names, "folder"
        else:
            self._classes, self.label_space = [], "unknown"

    def classes(self) -> list[str]:
        return self._classes

    def records(self, split: str) -> Iterator[Record]:
        """Samples of every shard, sorted by (cls, key) as the other sources are."""
        found = []
        for shard in split_shards(self.root, split):
            found += [(cls, key, shard, info) for key, cls, info in tar_images(shard)]
        found.sort(key=lambda item: (item[0], item[1]))
        for cls, key, shard, info in found:
            yield Record(key, cls, _tar_reader(shard, info), {"source_shard": shard.name})


def _tar_reader(shard: Path, info: tarfile.TarInfo | None) -> Callable[[], bytes]:
    def read() -> bytes:
        if info is None:
            return b""
        with open(shard, "rb") as fh:
            fh.seek(info.offset_data)
            return fh.read(info.size)

    return read


# --------------------------------------------------------------------------------------------
# coco


def rle_decode(counts: list[int] | str, height: int, width: int) -> np.ndarray:
    """Decode a COCO run-length encoding (list or compressed string, column-major) to a bool mask."""
    if isinstance(counts, str):
        counts = _rle_from_string(counts)
    flat = np.zeros(height * width, dtype=bool)
    pos, value = 0, False
    for run in counts:
        if value:
            flat[pos : pos + run] = True
        pos += run
        value = not value
    return flat.reshape(width, height).T


def _rle_from_string(s: str) -> list[int]:
    """COCO's compressed RLE string (LEB128-like, 5 bits a char, delta-coded from the third run)."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def polygon_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    from PIL import ImageDraw

    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        if len(poly) >= 6:
            draw.polygon([(poly[i], poly[i + 1]) for i in range(0, len(poly), 2)], fill=1)
    return np.asarray(canvas, dtype=bool)


def annotation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, list):
        return polygon_mask(segmentation, height, width)
    h, w = segmentation["size"]
    return rle_decode(segmentation["counts"], h, w)


def encode_masks(masks: list[np.ndarray], height: int, width: int) -> bytes:
    stack = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
    buf = io.BytesIO()
    np.savez_compressed(buf, masks=stack)
    return buf.getvalue()


class CocoSource:
    """COCO 2017 detection: ``cls`` = contiguous index of the largest object's category (-1 if none);
    extras carry every object's box (x, y, w, h in pixels), COCO category id and mask."""

    label_space = "coco"

    def __init__(self, root: str | Path, annotations: str, images: str):
        self.root = Path(root)
        self.annotations, self.images = annotations, images
        self._categories: list[dict] | None = None

    def _load(self, split: str) -> dict:
        path = self.root / self.annotations.format(split=split)
        if not path.exists():
            raise FileNotFoundError(f"COCO instances file {path} does not exist (data.root, data.coco.annotations)")
        return json.loads(path.read_text())

    def classes(self) -> list[str]:
        if self._categories is None:
            raise RuntimeError("CocoSource.classes() is known after records() of a split")
        return [c["name"] for c in self._categories]

    def records(self, split: str) -> Iterator[Record]:
        coco = self._load(split)
        self._categories = sorted(coco["categories"], key=lambda c: c["id"])
        index_of = {c["id"]: i for i, c in enumerate(self._categories)}
        per_image: dict[int, list[dict]] = {}
        for ann in coco["annotations"]:
            per_image.setdefault(ann["image_id"], []).append(ann)
        image_dir = self.root / self.images.format(split=split)
        entries = []
        for img in coco["images"]:
            anns = sorted(per_image.get(img["id"], []), key=lambda a: a["id"])
            largest = max(anns, key=lambda a: a.get("area", 0), default=None)
            cls = index_of[largest["category_id"]] if largest else -1
            entries.append((cls, safe_key(Path(img["file_name"]).stem), img, anns))
        entries.sort(key=lambda e: (e[0], e[1]))
        for cls, key, img, anns in entries:
            h, w = img["height"], img["width"]
            extras = {
                "boxes": [a["bbox"] for a in anns],
                "category_ids": [a["category_id"] for a in anns],
                "iscrowd": [a.get("iscrowd", 0) for a in anns],
                "masks": lambda anns=anns, h=h, w=w: encode_masks(
                    [annotation_mask(a["segmentation"], h, w) for a in anns], h, w
                ),
            }
            yield Record(key, cls, (image_dir / img["file_name"]).read_bytes, extras)


SOURCES: dict[str, Callable[[Data], Any]] = {
    "demo": lambda p: DemoSource(**plain(p.demo)),
    "imagefolder": lambda p: ImageFolderSource(p.root, list(p.splits)),
    "webdataset": lambda p: WebDatasetSource(p.root),
    "coco": lambda p: CocoSource(p.root, **plain(p.coco)),
}


def make_source(data_params: Data) -> Any:
    """Build the source named by ``data.source`` from the ``data`` params section."""
    kind = data_params.source
    if kind not in SOURCES:
        raise ValueError(f"data.source: unknown source '{kind}' (one of {', '.join(SOURCES)})")
    return SOURCES[kind](data_params)
