"""Reconstruction error by stage, modular versus classic inversion (the paper's Figs 3-4 and its
parameter comparison), plus what the other analyses share: pixel-space MSE and image grids.

Reconstruction MSE is reported in pixel space ([0, 1] RGB) on the val split, against the "mean
image" baseline (the train split's mean image), with bootstrap 95% intervals over images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from featinv.config import ModularAnalyses
from featinv.fileio import atomic_write_text, csv_text
from featinv.metrics.stats import summarise
from featinv.plots import image_grid, spread_rows, unit_to_uint8
from featinv.modular.inverses import chain
from featinv.modular.trained import Trained, load_split, representations


def per_image_mse(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """(N,) mean squared error per image."""
    return ((a - b) ** 2).flatten(1).mean(1).numpy()


def example_rows(n: int, examples: int) -> torch.Tensor:
    """``examples`` indices spread evenly over n images (so over the classes, contiguous in a split)."""
    return torch.from_numpy(spread_rows(n, examples))


def save_grid(rows: list[list[torch.Tensor | None]], path: str | Path) -> None:
    """A grid of (3, H, W) [0, 1] images, one list per row (None leaves a cell blank)."""
    as_hwc = [[None if img is None else unit_to_uint8(img.permute(1, 2, 0)) for img in row] for row in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(as_hwc).save(path)


def ci_row(values: np.ndarray) -> list[float]:
    s = summarise(values)
    return [s["mean"], s["ci_low"], s["ci_high"]]


def mse_by_stage(trained: Trained, analyses: ModularAnalyses, shards: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """``mse_by_stage.csv``, ``params.csv`` and ``reconstructions.png`` under ``out_dir``."""
    fwd = trained.forward
    if trained.mean_image is None:
        raise ValueError("these inverses were saved without the train split's mean image: retrain them "
                         "(featinv train-modular)")
    val_px = load_split(shards, "val", fwd.image_size, fwd.fit).pixels
    reps = representations(fwd, val_px)
    baseline = per_image_mse(trained.mean_image.expand_as(val_px), val_px)
    pick = example_rows(len(val_px), analyses.examples)
    rows, grid = [], [list(val_px[pick])]
    final = trained.meta["final_loss"]
    instances = trained.instances or [(trained.modular, trained.classic)]
    with torch.no_grad():
        for j, name in enumerate(fwd.staged.names, 1):
            mod = fwd.pixels(chain(trained.modular, reps[j], j))
            cla = fwd.pixels(chain(trained.classic[j - 1], reps[j], j))
            # the spread over independently trained instances (the paper trains at least three)
            spread = [np.std([float(per_image_mse(fwd.pixels(chain(path(k), reps[j], j)), val_px).mean())
                              for k in instances], ddof=1) if len(instances) > 1 else 0.0
                      for path in (lambda k: k[0], lambda k: k[1][j - 1])]
            rows.append([name, *ci_row(per_image_mse(mod, val_px)), *ci_row(per_image_mse(cla, val_px)),
                         float(baseline.mean()), final["modular"][j - 1], final["classic"][j - 1], *spread,
                         len(instances)])
            grid.append(list(mod[pick]))
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
