"""Reconstruction error by stage, modular versus classic inversion (the paper's Figs 3-4 and its
parameter comparison), on a timm CNN backbone split into stage groups.

Images are the split's target views (central square at ``image_size``) in the backbone's normalised
input space; reconstruction MSE is reported in pixel space ([0, 1] RGB), against the "mean image"
baseline (the train split's mean image). Representations of every stage are computed once and held in
memory (the demo's are a few tens of MB), so the forward model never runs per training step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from featinv.backbones import create_backbone
from featinv.fileio import atomic_write_text, csv_text
from featinv.metrics.stats import summarise
from featinv.modular.inverses import build_inverses, chain
from featinv.modular.stages import cnn_stages
from featinv.modular.training import classic_inverses, count_parameters, train_classic, train_modular


def split_images(shards: str | Path, split: str, size: int) -> torch.Tensor:
    """(N, 3, size, size) floats in [0, 1]: the split's target views."""
    from featinv.diffusion.targets import view_images

    arrays = view_images(shards, split, size).astype(np.float32) / 255.0
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def _representations(staged, images: torch.Tensor, batch: int = 64) -> list[torch.Tensor]:
    parts = [staged.representations(images[i:i + batch]) for i in range(0, len(images), batch)]
    return [torch.cat([p[j] for p in parts]) for j in range(len(parts[0]))]


def modular_mse(cfg: dict[str, Any], shards: str | Path, out_dir: str | Path, weights: str | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Train modular and classic inverses on the train split, score them on the val split; write
    ``mse_by_stage.csv``, ``params.csv`` and ``reconstructions.png`` under ``out_dir``."""
    torch.manual_seed(cfg["seed"])
    backbone = create_backbone(cfg["backbone"], weights=weights)
    staged = cnn_stages(backbone.model, cfg["groups"])
    mean = torch.tensor(backbone.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.preprocessing.std).view(1, 3, 1, 1)
    train_px = split_images(shards, "train", cfg["image_size"])
    val_px = split_images(shards, "val", cfg["image_size"])
    train_reps = _representations(staged, (train_px - mean) / std)
    val_reps = _representations(staged, (val_px - mean) / std)

    kw = {"hidden": cfg["hidden"], "depth": cfg["depth"], "heads": cfg["heads"]}
    modular = build_inverses(staged, train_reps, **kw)
    classic = classic_inverses(staged, train_reps, **kw)
    train_args = {"steps": cfg["steps"], "batch_size": cfg["batch_size"], "lr": cfg["lr"], "seed": cfg["seed"],
                  "progress": progress}
    modular_loss = train_modular(modular, train_reps, **train_args)
    classic_loss = train_classic(classic, train_reps, **train_args)

    def pixel_mse(x_norm: torch.Tensor) -> np.ndarray:
        px = (x_norm * std + mean).clamp(0, 1)
        return ((px - val_px) ** 2).flatten(1).mean(1).numpy()

    baseline = ((train_px.mean(0, keepdim=True) - val_px) ** 2).flatten(1).mean(1).numpy()
    rows, grid = [], [val_px]
    pick = torch.from_numpy(np.unique(np.linspace(0, len(val_px) - 1, cfg["examples"]).round().astype(int)))
    with torch.no_grad():
        for j, name in enumerate(staged.names, 1):
            mod = chain(modular, val_reps[j], j)
            cla = chain(classic[j - 1], val_reps[j], j)
            m, c = summarise(pixel_mse(mod)), summarise(pixel_mse(cla))
            rows.append([name, m["mean"], m["ci_low"], m["ci_high"], c["mean"], c["ci_low"], c["ci_high"],
                         float(baseline.mean()), modular_loss[j - 1][-1], classic_loss[j - 1][-1]])
            grid.append((mod * std + mean).clamp(0, 1))
    out_dir = Path(out_dir)
    header = ["stage", "modular_mse", "modular_ci95_low", "modular_ci95_high", "classic_mse", "classic_ci95_low",
              "classic_ci95_high", "mean_image_mse", "modular_final_train_loss", "classic_final_train_loss"]
    atomic_write_text(out_dir / "mse_by_stage.csv", csv_text(header, rows, ".6g"))

    p = [count_parameters(m) for m in modular]
    n, total = len(p), sum(p)
    param_rows = [[name, p[j], sum(p[:j + 1]), count_parameters(classic[j])] for j, name in enumerate(staged.names)]
    param_rows.append(["total", total, total, count_parameters(classic)])
    param_rows.append(["paper: p vs (n+1)p/2 for equal stages", total, total, (n + 1) * total / 2])
    atomic_write_text(out_dir / "params.csv", csv_text(["stage", "modular_component", "modular_path", "classic_path"],
                                                       param_rows, ".6g"))
    _save_grid([g[pick] for g in grid], out_dir / "reconstructions.png")
    return {"stages": staged.names, "mse": rows, "params": param_rows}


def _save_grid(rows: list[torch.Tensor], path: Path) -> None:
    """Originals in the first row, then the modular reconstruction from each stage."""
    from featinv.diffusion.preview import image_grid

    as_hwc = [[(img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for img in row] for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(as_hwc).save(path)
