"""build_shards on an ImageNet-format folder of real photographs (JPEGs of ImageNet's typical size,
500 x 375, made from the demo's photographs), decoded on 1 and on 2 threads: images per second of each
and the ratio, in one run. ImageNet's 1.28M train images at the measured rate: the hours printed.

    python benchmarks/shards.py [--images 400] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from featinv.data.shards import build
from featinv.data.sources import DEMO_PHOTOS, DemoSource, ImageFolderSource, imagenet_synsets

IMAGENET_TRAIN = 1_281_167


def make_folder(root: Path, n: int) -> None:
    """``n`` JPEGs (quality 90, 500 x 375) under ImageNet synsets, cut from the demo's photographs."""
    images = [DemoSource.photo(name) for name in sorted(DEMO_PHOTOS)]
    synsets = imagenet_synsets()
    for i in range(n):
        img = images[i % len(images)]
        w, h = img.size
        side = min(w, h)
        box = ((i * 7) % max(1, w - side + 1), (i * 5) % max(1, h - side + 1))
        crop = img.crop((box[0], box[1], box[0] + side, box[1] + side)).resize((500, 375))
        d = root / "train" / synsets[i % 10]
        d.mkdir(parents=True, exist_ok=True)
        crop.save(d / f"img_{i:05d}.JPEG", quality=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_folder(root / "src", args.images)
        best = {}
        for _ in range(args.repeats):
            for threads in (1, 2):
                start = time.perf_counter()
                build(ImageFolderSource(root / "src", ["train"]), root / f"out{threads}", "bench", ["train"],
                      {"train": None}, 1000, threads=threads)
                best[threads] = min(best.get(threads, 1e9), time.perf_counter() - start)
        for threads, seconds in best.items():
            rate = args.images / seconds
            print(f"{threads} thread(s): {rate:.0f} images/s ({args.images} images in {seconds:.2f} s); "
                  f"ImageNet train at this rate: {IMAGENET_TRAIN / rate / 3600:.1f} h")
        print(f"2 threads / 1 thread: {best[1] / best[2]:.2f}x")


if __name__ == "__main__":
    main()
