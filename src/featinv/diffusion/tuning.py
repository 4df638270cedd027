"""Per-model sampling tuning (FeatInv section 4.1): the control strength and guidance scale of each
model, chosen on a subset of the sampling split by top-1 match, with top-5 match and cosine-sim
beside it (the paper reports that cosine-sim follows the top-1 match closely).

Every cell of the grid reconstructs the same maps from the same starting noise, and is scored as
Table 1 scores: the conditioning backbone rebuilt from the feature store (its input size), the
reconstruction seen as ``metrics.scoring`` says, bootstrap intervals over maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from featinv import rowstore
from featinv.config import Metrics, Sampling
from featinv.devices import resolve_device
from featinv.diffusion.base import BaseModel
from featinv.diffusion.controlnet import FeatureControlNet
from featinv.diffusion.sample import auto_batch_size, denoise, initial_noise, make_scheduler
from featinv.features.origin import store_backbone
from featinv.features.store import conditioning
from featinv.fileio import atomic_write_text, csv_text, write_json
from featinv.metrics.evaluate import score_images
from featinv.metrics.stats import bootstrap_of
from featinv.plots import pyplot, save_figure, spread_rows, to_uint8

MEASURES = ("top1", "top5", "cosine_sim")


@dataclass(frozen=True)
class Cell:
    """One grid cell: its two settings and each measure as {mean, ci_low, ci_high}."""

    control_strength: float
    guidance_scale: float
    scores: dict[str, dict[str, float]]  # MEASURES -> summary

    def row(self) -> list[Any]:
        return [self.control_strength, self.guidance_scale,
                *(self.scores[m][k] for m in MEASURES for k in ("mean", "ci_low", "ci_high"))]


HEADER = ["control_strength", "guidance_scale", *(f"{m}{s}" for m in MEASURES for s in ("", "_ci_low", "_ci_high"))]


def best_cell(cells: list[Cell]) -> Cell:
    """The cell with the highest top-1 match; ties go to the higher cosine-sim, then to the earlier cell."""
    return max(enumerate(cells), key=lambda ic: (ic[1].scores["top1"]["mean"], ic[1].scores["cosine_sim"]["mean"],
                                                 -ic[0]))[1]


@torch.inference_mode()
def tune(base: BaseModel, net: FeatureControlNet, features: str | Path, sampling: Sampling, metrics: Metrics,
         prompt: str, weights: str | None = None, device: str = "auto",
         progress: bool = True) -> tuple[list[Cell], int]:
    """Score every (control strength, guidance scale) of ``sampling.tune`` on ``sampling.tune.maps``
    maps of the store ``features`` (spread evenly over it): the cells in grid order, and the map count."""
    grid = sampling.tune
    feats = rowstore.open_complete(features)
    n = feats["keys"].shape[0]
    rows = spread_rows(n, min(grid.maps, n))
    keys = [str(feats["keys"][int(r)]) for r in rows]
    cond = torch.from_numpy(conditioning(feats, net.meta["variant"]).get_orthogonal_selection((rows,)).astype(np.float32))
    ref_maps = feats["features"].get_orthogonal_selection((rows,)).astype(np.float32)
    ref_top1 = feats["topk_indices"].get_orthogonal_selection((rows,))[:, 0]
    backbone = store_backbone(feats.attrs, weights)
    dev = resolve_device(device)
    base.to(dev)
    net.to(dev)
    text = base.prompt_embeddings(prompt).to(dev)
    noise = initial_noise(keys, [0] * len(keys), grid.seed, base.latent_shape)
    batch = sampling.batch_size or auto_batch_size(dev, base.latent_shape)
    boot = bootstrap_of(metrics)
    settings = [(s, g) for s in grid.control_strength for g in grid.guidance_scale]
    cells = []
    for strength, guidance in tqdm(settings, desc=f"tune {net.meta['backbone']} {net.meta['variant']}",
                                   unit="cell", disable=not progress):
        images = np.concatenate([
            to_uint8(denoise(base, net, cond[i:i + batch].to(dev), noise[i:i + batch].to(dev), text,
                             make_scheduler(sampling.scheduler, base, sampling.timestep_spacing), sampling.steps, guidance, strength,
                             hint_guidance=sampling.hint_guidance))
            for i in range(0, len(rows), batch)])
        scores = score_images(backbone, images, ref_maps, ref_top1, metrics, dev, boot)
        cells.append(Cell(float(strength), float(guidance), {m: scores[m] for m in MEASURES}))
    return cells, len(rows)


def write_tuning(cells: list[Cell], out_csv: str | Path, out_png: str | Path, out_json: str | Path,
                 model: str, maps: int) -> dict[str, Any]:
    """The grid as a CSV, a heat map of top-1 match (cosine-sim in each cell) and the chosen settings
    as JSON (what ``sample`` reads under ``sampling.tuning: auto``)."""
    atomic_write_text(out_csv, csv_text(HEADER, [c.row() for c in cells], ".6g"))
    best = best_cell(cells)
    top1 = np.array([c.scores["top1"]["mean"] for c in cells])
    cos = np.array([c.scores["cosine_sim"]["mean"] for c in cells])
    corr = float(np.corrcoef(top1, cos)[0, 1]) if len(cells) > 2 and top1.std() > 0 and cos.std() > 0 else None
    chosen = {"model": model, "maps": maps, "control_strength": best.control_strength,
              "guidance_scale": best.guidance_scale, "scores": best.scores, "cells": len(cells),
              "top1_cosine_correlation": corr}
    write_json(out_json, chosen)
    strengths = sorted({c.control_strength for c in cells})
    guidances = sorted({c.guidance_scale for c in cells})
    by = {(c.control_strength, c.guidance_scale): c for c in cells}
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(guidances) + 2.5, 0.8 * len(strengths) + 1.8))
    heat = np.array([[by[s, g].scores["top1"]["mean"] for g in guidances] for s in strengths])
    im = ax.imshow(heat, cmap="viridis", vmin=0, vmax=1, origin="lower")
    for i, s in enumerate(strengths):
        for j, g in enumerate(guidances):
            mark = "*" if (s, g) == (best.control_strength, best.guidance_scale) else ""
            ax.text(j, i, f"{heat[i, j]:.2f}{mark}\ncos {by[s, g].scores['cosine_sim']['mean']:.3f}",
                    ha="center", va="center", fontsize=7, color="w")
    ax.set_xticks(range(len(guidances)), [f"{g:g}" for g in guidances])
    ax.set_yticks(range(len(strengths)), [f"{s:g}" for s in strengths])
    ax.set_xlabel("guidance scale")
    ax.set_ylabel("control strength")
    ax.set_title(f"{model}: top-1 match on {maps} maps (* chosen)", fontsize=9)
    fig.colorbar(im, ax=ax, label="top-1 match")
    fig.tight_layout()
    save_figure(fig, out_png)
    return chosen
