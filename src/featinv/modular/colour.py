"""Colour perturbations (the paper's section 4.3, Figs 6-7).

Filters act in HSV, as the official code does with OpenCV (hue 0..180 there, 0..1 here): ``red``,
``green``, ``blue`` set the hue to 0, 1/3, 2/3; ``hue120`` and ``hue240`` rotate it by 120 and 240
degrees, keeping saturation and value, so grey pixels stay grey. Where the shards carry object
masks (COCO) they recolour, as the paper does, every instance of one category at a time, over the
images that hold it, and the tables average over the categories; otherwise the whole image. ``grayscale``
converts every pixel of the image, as the paper does, to its luminance (ITU-R 601:
0.2989 R + 0.587 G + 0.114 B, as torchvision's ``Grayscale`` and the official code).

Analysis: for every val image the six filtered versions are compared pairwise (mean MSE over the 15
pairs) at the input and after the modular reconstruction from every stage (Fig 7 left); and the
task score on each recolouring, "none" included (Fig 7 right): a classifier's accuracy against
:func:`featinv.modular.trained.task_targets` of the unperturbed images (with categories, each value
is the mean over categories of the mean over their images, its interval over categories); DETR's
COCO box AP with each filter on the whole image (the paper's Fig 7 right).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from featinv.config import ModularAnalyses
from featinv.fileio import atomic_write_text, csv_text
from featinv.metrics.pairwise import pairwise_mse
from featinv.modular.analysis import ci_row, save_grid
from featinv.modular.boxes import box_ap, scored_detections
from featinv.modular.inverses import chain
from featinv.modular.trained import Trained, has_objects, representations, split_index, split_parts, task_targets

FILTERS = ("red", "green", "blue", "hue120", "hue240", "grayscale")
LUMINANCE = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def recolour(pixels: torch.Tensor, name: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Filter ``name`` (one of FILTERS, or ``none``) on (N, 3, H, W) RGB in [0, 1]; a hue filter
    only inside ``mask`` ((N, 1, H, W) bool) if given, ``grayscale`` on the whole image."""
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    if name == "none":
        return pixels.clone()
    if name not in FILTERS:
        raise ValueError(f"unknown colour filter '{name}' (one of none, {', '.join(FILTERS)})")
    if name == "grayscale":
        weights = torch.tensor(LUMINANCE, dtype=pixels.dtype).view(1, 3, 1, 1)
        return (pixels * weights).sum(1, keepdim=True).expand_as(pixels).clone()
    hsv = rgb_to_hsv(pixels.permute(0, 2, 3, 1).clamp(0, 1).numpy())
    h = hsv[..., 0]
    if name in ("red", "green", "blue"):
        h[...] = {"red": 0.0, "green": 1 / 3, "blue": 2 / 3}[name]
    elif name in ("hue120", "hue240"):
        h[...] = (h + (1 / 3 if name == "hue120" else 2 / 3)) % 1.0
    out = torch.from_numpy(hsv_to_rgb(hsv)).permute(0, 3, 1, 2).to(pixels.dtype)
    return out if mask is None else torch.where(mask, out, pixels)


def colour_analysis(trained: Trained, analyses: ModularAnalyses, shards: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """``colour_pairwise_mse.csv``, ``colour_accuracy.csv`` (classifiers) or ``colour_ap.csv``
    (DETR), ``colour.png`` (examples) and ``colour_plot.png`` (Fig 7) under ``out_dir``. Each
    recolouring set streams in parts of ``modular_analyses.batch_size`` images."""
    fwd = trained.forward
    levels = ["input", *fwd.staged.names]
    target = "none (not a classifier)"
    results: list[dict[str, Any]] = []
    example: Any = None
    sets = recolouring_sets(shards)
    shown_row = sets[0][1][len(sets[0][1]) // 2]  # the example: the middle image of the first set
    with torch.no_grad():
        for k, (category, rows) in enumerate(sets):
            parts = []
            for part_rows, part in split_parts(shards, "val", fwd.image_size, fwd.fit, analyses.batch_size, rows):
                masks = None if category is None else part.category_masks(category)[1]
                keep = part_rows.index(shown_row) if k == 0 and shown_row in part_rows else None
                out = _recoloured(trained, part, masks, keep)
                target = out["target"] or target
                example = out["recon"] or example
                parts.append(out)
            results.append({"pairwise": [np.concatenate([p["pairwise"][i] for p in parts]) for i in range(len(levels))],
                            "accuracy": {f: np.concatenate([p["accuracy"][f] for p in parts])
                                         for f in parts[0]["accuracy"]}})
    pair_rows = [[level, *_over_sets([r["pairwise"][k] for r in results])] for k, level in enumerate(levels)]
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "colour_pairwise_mse.csv",
                      csv_text(["level", "pairwise_mse", "ci95_low", "ci95_high"], pair_rows, ".6g"))
    if fwd.staged.kind == "detr":
        task_rows = ap_under_recolouring(trained, shards, analyses.batch_size)
        atomic_write_text(out_dir / "colour_ap.csv", csv_text(["filter", "ap", "ap50", "ap75"], task_rows, ".6g"))
        target = "COCO box AP, whole image recoloured"
    else:
        task_rows = [[f, *_over_sets([r["accuracy"][f] for r in results]), target, sets[0][0] is not None]
                     for f in results[0]["accuracy"]]
        atomic_write_text(out_dir / "colour_accuracy.csv",
                          csv_text(["filter", "accuracy", "ci95_low", "ci95_high", "target", "object_masks"],
                                   task_rows, ".6g"))
        target = f"accuracy vs {target}"
    # one example: rows = filters, columns = input and each stage's reconstruction
    save_grid([[example[f][k] for k in range(len(levels))] for f in ("none", *FILTERS)], out_dir / "colour.png")
    _plot(levels, pair_rows, task_rows, target, fwd.staged.kind != "detr", out_dir / "colour_plot.png")
    return {"pairwise_mse": pair_rows, "ap" if fwd.staged.kind == "detr" else "accuracy": task_rows}


@torch.no_grad()
def ap_under_recolouring(trained: Trained, shards: str | Path, batch: int) -> list[list]:
    """[filter, AP, AP50, AP75] of DETR on the val split with each filter ("none" too) applied to
    every pixel of the image, scored against the split's COCO boxes."""
    fwd = trained.forward
    found: dict[str, list] = {f: [] for f in ("none", *FILTERS)}
    for _, part in split_parts(shards, "val", fwd.image_size, fwd.fit, batch):
        if part.objects is None:
            raise ValueError("DETR's AP under recolouring needs object annotations (COCO shards): the val split has none")
        for f, images in found.items():
            x_pred = fwd.staged.run(fwd.normalise(recolour(part.pixels, f)))
            images += scored_detections(part.objects, x_pred, fwd.image_size)
    return [[f, *(box_ap(images)[k] for k in ("AP", "AP50", "AP75"))] for f, images in found.items()]


def recolouring_sets(shards: str | Path, block: int = 256) -> list[tuple[int | None, list[int]]]:
    """(category, val rows) recoloured together: one set per object category (every instance of it,
    in each image holding it; most frequent first) where the split has object masks, else
    (None, every row) for the whole images. Reads the annotations only, block by block."""
    from featinv.data.shards import read_masks

    index = split_index(shards, "val")
    if not has_objects(shards):
        return [(None, list(range(len(index))))]
    counts: dict[int, list[int]] = {}
    for start in range(0, len(index), block):
        for r, annotated in enumerate(read_masks(index[start:start + block]), start):
            for c in sorted(set(annotated[1])) if annotated is not None else []:
                counts.setdefault(c, []).append(r)
    return [(c, counts[c]) for c in sorted(counts, key=lambda c: (-len(counts[c]), c))]


def _recoloured(trained: Trained, part, masks: torch.Tensor | None, keep: int | None) -> dict[str, Any]:
    """One part of a set: per level the per-image pairwise MSE over FILTERS, per filter ("none"
    too) the per-image accuracy against the unperturbed images' task targets, and, for image
    ``keep``, every filter's input and reconstructions."""
    fwd = trained.forward
    recon: dict[str, list[torch.Tensor]] = {}  # filter -> [input, recon from stage 1, ..., n]
    accuracy: dict[str, np.ndarray] = {}
    reference = target = None
    for f in ("none", *FILTERS):
        px = recolour(part.pixels, f, masks)
        reps = representations(fwd, px)
        recon[f] = [px] + [fwd.pixels(chain(trained.modular, reps[j], j)) for j in range(1, len(reps))]
        if fwd.classifier:
            if reference is None:  # "none" comes first: the unperturbed images
                reference, target = task_targets(part, reps[-1])
            accuracy[f] = (reps[-1].argmax(-1) == reference).float().numpy()
    pairwise = [pairwise_mse(np.stack([recon[f][k].numpy() for f in FILTERS])) for k in range(len(recon["none"]))]
    shown = None if keep is None else {f: [x[keep] for x in xs] for f, xs in recon.items()}
    return {"pairwise": pairwise, "accuracy": accuracy, "recon": shown, "target": target}


def _over_sets(values: list[np.ndarray]) -> list[float]:
    """[mean, low, high]: over the images of a single set, or over the sets' means (categories)."""
    if len(values) == 1:
        return ci_row(values[0])
    return ci_row(np.array([v.mean() for v in values]))


def _plot(levels, pair_rows, task_rows, target, intervals: bool, path: Path) -> None:
    """Fig 7: pairwise MSE by level (left), the task score per filter (right; ``intervals``: the
    rows' columns 2-3 are its 95% interval)."""
    from featinv.plots import pyplot, save_figure

    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    x = np.arange(len(levels))
    mean, lo, hi = (np.array([r[k] for r in pair_rows]) for k in (1, 2, 3))
    left.plot(x, mean, marker="o")
    left.fill_between(x, lo, hi, alpha=0.3)
    left.set_xticks(x, levels, rotation=30)
    left.set_ylabel("avg pairwise MSE")
    left.set_title("recoloured versions: input vs reconstructions")
    if task_rows:
        right.bar([r[0] for r in task_rows], [r[1] for r in task_rows],
                  yerr=[[r[1] - r[2] for r in task_rows], [r[3] - r[1] for r in task_rows]] if intervals else None)
        right.set_ylim(0, 1)
        right.tick_params(axis="x", rotation=30)
    right.set_ylabel(target)
    right.set_title("task score under recolouring")
    fig.tight_layout()
    save_figure(fig, path)
