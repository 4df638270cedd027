"""Detection errors in DETR (the paper's section 4.6, Fig 10): are objects DETR misses suppressed
along its stages? Ground-truth objects of the val split (COCO instance masks; each box is its
mask's extent in the fitted image) are matched to DETR's detections (class score of a query at least
``modular_analyses.detection.threshold``, no-object excluded; a detection matches an object of its
category with IoU >= ``iou``, greedily by score). For every stage, the modular reconstruction's
pixel MSE inside each object's box, over detected and over missed objects: the paper sees missed
objects fade from bb and enc on and vanish from dec and pred.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from featinv.config import ModularAnalyses
from featinv.fileio import atomic_write_text, csv_text
from featinv.modular.analysis import ci_row, save_grid, val_parts
from featinv.modular.boxes import detections, ground_truth, match
from featinv.modular.inverses import chain
from featinv.modular.trained import Trained, load_split, representations


def detection_errors(trained: Trained, analyses: ModularAnalyses, shards: str | Path,
                     out_dir: str | Path) -> dict[str, Any]:
    """``detection.csv`` (per stage: box MSE over detected and missed objects) and ``detection.png``
    (the images with the most misses: ground truth, green = detected, red = missed; detections in
    blue; then the reconstruction from every stage) under ``out_dir``."""
    fwd = trained.forward
    if fwd.staged.kind != "detr":
        raise ValueError(f"the detection-error analysis is for DETR; {fwd.name} is not one")
    cfg = analyses.detection
    n = len(fwd.staged.names)
    errors: list[list[float]] = []
    hits: list[bool] = []
    per_image: dict[int, Any] = {}  # per object: (stages,) box MSE, detected; per row: its boxes and detections
    with torch.no_grad():
        for part_rows, part, reps in val_parts(trained, shards, analyses.batch_size):
            if part.objects is None:
                raise ValueError("the detection-error analysis needs object annotations (COCO shards): "
                                 "the val split has none")
            recon = [fwd.pixels(chain(trained.modular, reps[j], j)) for j in range(1, n + 1)]
            for i, (row, objs) in enumerate(zip(part_rows, part.objects)):
                boxed = [(c, b) for c, b, _ in ground_truth(objs)]
                found = detections(reps[n][i], fwd.image_size, cfg.threshold)
                matched = match(boxed, found, cfg.iou)
                for (_, b), hit in zip(boxed, matched):
                    errors.append([_box_mse(recon[j][i], part.pixels[i], b) for j in range(n)])
                    hits.append(hit)
                per_image[row] = (boxed, matched, found)
    err, hit_mask = np.array(errors).reshape(-1, n), np.array(hits, dtype=bool)
    rows = [[name, *_summary(err[hit_mask, j]), int(hit_mask.sum()), *_summary(err[~hit_mask, j]), int((~hit_mask).sum())]
            for j, name in enumerate(fwd.staged.names)]
    header = ["stage", "detected_box_mse", "detected_ci95_low", "detected_ci95_high", "detected_objects",
              "missed_box_mse", "missed_ci95_low", "missed_ci95_high", "missed_objects"]
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "detection.csv", csv_text(header, rows, ".6g"))
    worst = sorted(per_image, key=lambda r: (-sum(not h for h in per_image[r][1]), r))[:analyses.examples]
    shown = load_split(shards, "val", fwd.image_size, fwd.fit, worst)
    with torch.no_grad():
        shown_reps = representations(fwd, shown.pixels)
        recon = [fwd.pixels(chain(trained.modular, shown_reps[j], j)) for j in range(1, n + 1)]
    grid = []
    for i, r in enumerate(worst):
        boxed, matched, found = per_image[r]
        grid.append([_draw(shown.pixels[i], [(b, (0, 200, 0) if h else (230, 0, 0)) for (_, b), h in zip(boxed, matched)]),
                     _draw(shown.pixels[i], [(b, (0, 90, 255)) for *_, b in found]), *[recon[j][i] for j in range(n)]])
    save_grid(grid, out_dir / "detection.png")
    return {"rows": rows, "threshold": cfg.threshold}


def _box_mse(img: torch.Tensor, ref: torch.Tensor, box: tuple[int, int, int, int]) -> float:
    x0, y0, x1, y1 = box
    return float(((img[:, y0:y1, x0:x1] - ref[:, y0:y1, x0:x1]) ** 2).mean())


def _summary(values: np.ndarray) -> list[float]:
    """[mean, ci low, ci high] over objects; NaN where there are none."""
    return ci_row(values) if len(values) else [float("nan")] * 3


def _draw(img: torch.Tensor, boxes: list[tuple[tuple, tuple[int, int, int]]]) -> torch.Tensor:
    """(3, H, W) [0, 1] with box outlines drawn in their colours."""
    from PIL import Image, ImageDraw

    from featinv.plots import unit_to_uint8

    pil = Image.fromarray(unit_to_uint8(img.permute(1, 2, 0)))
    draw = ImageDraw.Draw(pil)
    for (x0, y0, x1, y1), colour in boxes:
        draw.rectangle([x0, y0, max(x0, x1 - 1), max(y0, y1 - 1)], outline=colour, width=max(1, img.shape[-1] // 160))
    return torch.from_numpy(np.asarray(pil).astype(np.float32) / 255.0).permute(2, 0, 1)
