"""Reconstruction error by stage, modular versus classic inversion (the paper's Figs 3-4 and its
parameter comparison), plus what the other analyses share: pixel-space MSE and image grids.

Reconstruction MSE is reported in pixel space ([0, 1] RGB) on the val split, against the "mean
image" baseline (the train split's mean image), with bootstrap 95% intervals over images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featinv.config import ModularAnalyses
from featinv.fileio import atomic_write_text, csv_text
from featinv.metrics.stats import summarise
from featinv.plots import image_grid, spread_rows, unit_to_uint8
from featinv.modular.inverses import chain, classic_path
from featinv.modular.trained import Trained, load_split, representations, split_parts, split_size


def per_image_mse(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """(N,) mean squared error per image."""
    return ((a - b) ** 2).flatten(1).mean(1).numpy()


def save_grid(rows: Sequence[Sequence[torch.Tensor | None]], path: str | Path) -> None:
    """A grid of (3, H, W) [0, 1] images, one list per row (None leaves a cell blank)."""
    as_hwc = [[None if img is None else unit_to_uint8(img.permute(1, 2, 0)) for img in row] for row in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(as_hwc).save(path)


def ci_row(values: np.ndarray) -> list[float]:
    s = summarise(values)
    return [s["mean"], s["ci_low"], s["ci_high"]]


def val_parts(trained: Trained, shards: str | Path, batch: int, rows=None):
    """The val split (or its ``rows``) part by part: (rows, :class:`Split` of them, their stage
    representations [x_0, ..., x_n]); memory holds one part whatever the split's size."""
    fwd = trained.forward
    for part_rows, part in split_parts(shards, "val", fwd.image_size, fwd.fit, batch, rows):
        yield part_rows, part, representations(fwd, part.pixels)


def examples(trained: Trained, shards: str | Path, count: int):
    """(rows, Split, representations) of ``count`` val images spread over the split, for the figures."""
    pick = spread_rows(split_size(shards, "val"), count).tolist()
    fwd = trained.forward
    part = load_split(shards, "val", fwd.image_size, fwd.fit, pick)
    return pick, part, representations(fwd, part.pixels)


def mse_by_stage(trained: Trained, analyses: ModularAnalyses, shards: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """``mse_by_stage.csv``, ``params.csv`` and ``reconstructions.png`` under ``out_dir``."""
    fwd = trained.forward
    if trained.mean_image is None:
        raise ValueError("these inverses were saved without the train split's mean image: retrain them "
                         "(featinv train-modular)")
    names = fwd.staged.names
    instances = trained.instances or [(trained.modular, trained.classic)]
    # per instance, path kind and stage: per-image MSE, part by part
    errors: dict[tuple[int, str, int], list[np.ndarray]] = {(k, kind, j): [] for k in range(len(instances)) for kind in ("modular", "classic")
              for j in range(1, len(names) + 1)}
    baseline = []
    with torch.no_grad():
        for _, part, reps in val_parts(trained, shards, analyses.batch_size):
            px = part.pixels
            baseline.append(per_image_mse(trained.mean_image.expand_as(px), px))
            for k, (modular, classic) in enumerate(instances):
                for j in range(1, len(names) + 1):
                    errors[k, "modular", j].append(per_image_mse(fwd.pixels(chain(modular, reps[j], j)), px))
                    errors[k, "classic", j].append(per_image_mse(fwd.pixels(chain(classic_path(classic, j), reps[j], j)), px))
        _, shown, shown_reps = examples(trained, shards, analyses.examples)
        grid = [list(shown.pixels)] + [list(fwd.pixels(chain(trained.modular, shown_reps[j], j)))
                                       for j in range(1, len(names) + 1)]
    per_image = {key: np.concatenate(v) for key, v in errors.items()}
    mean_image_mse = float(np.concatenate(baseline).mean())
    final = trained.meta["final_loss"]
    rows = []
    for j, name in enumerate(names, 1):
        # the spread over independently trained instances (the paper trains at least three)
        spread = [float(np.std([per_image[k, kind, j].mean() for k in range(len(instances))], ddof=1))
                  if len(instances) > 1 else 0.0 for kind in ("modular", "classic")]
        rows.append([name, *ci_row(per_image[0, "modular", j]), *ci_row(per_image[0, "classic", j]), mean_image_mse,
                     final["modular"][j - 1], final["classic"][j - 1], *spread, len(instances)])
    out_dir = Path(out_dir)
    header = ["stage", "modular_mse", "modular_ci95_low", "modular_ci95_high", "classic_mse", "classic_ci95_low",
              "classic_ci95_high", "mean_image_mse", "modular_final_train_loss", "classic_final_train_loss",
              "modular_mse_sd_over_instances", "classic_mse_sd_over_instances", "instances"]
    atomic_write_text(out_dir / "mse_by_stage.csv", csv_text(header, rows, ".6g"))

    p = trained.meta["parameters"]["modular"]
    classic = trained.meta["parameters"]["classic"]
    n, total = len(p), sum(p)
    param_rows = [[name, p[j], sum(p[:j + 1]), classic[j]] for j, name in enumerate(fwd.staged.names)]
    param_rows.append(["total", total, total, sum(classic)])
    param_rows.append(["paper: p vs (n+1)p/2 for equal stages", total, total, (n + 1) * total / 2])
    atomic_write_text(out_dir / "params.csv", csv_text(["stage", "modular_component", "modular_path", "classic_path"],
                                                       param_rows, ".6g"))
    save_grid(grid, out_dir / "reconstructions.png")
    return {"stages": fwd.staged.names, "mse": rows, "params": param_rows}
