"""Intermediate layers (the paper's section 4.7, Fig 11): representations inside a stage (a ViT's or
DETR's encoder blocks, DETR's decoder layers, the layers of a CNN block group), fed to the modular
inverses trained on stage outputs of the same shape, and chained down to an image.

For every stage j that exposes ``layers``: layer 0 is the stage's input x_{j-1}, layers 1..L its
inner outputs (L = the stage's output); each is reconstructed from every stage i whose output has
its shape, or holds the same values as tokens of a map (a ViT's enc layers go to enc^-1 and to
bb^-1; DETR's encoder layers, tokens (B, h*w, D), go to bb^-1 as maps (B, D, h, w); a CNN group's
layers of the group's output shape to that group's inverse). The table gives the pixel MSE to the
image per (layer, inverse).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from featinv.config import ModularAnalyses
from featinv.fileio import atomic_write_text, csv_text
from featinv.modular.analysis import ci_row, per_image_mse, save_grid
from featinv.modular.inverses import chain
from featinv.modular.trained import Trained, load_split, representations


def as_layout(x: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """``x`` in the layout ``shape``: itself, tokens (B, h*w, D) as a map (B, D, h, w) or a map as
    tokens (row-major positions, as DETR flattens its map); None where neither fits."""
    if x.shape == shape:
        return x
    if x.ndim == 3 and len(shape) == 4 and x.shape == (shape[0], shape[2] * shape[3], shape[1]):
        return x.transpose(1, 2).reshape(shape)
    if x.ndim == 4 and len(shape) == 3 and shape == (x.shape[0], x.shape[2] * x.shape[3], x.shape[1]):
        return x.flatten(2).transpose(1, 2)
    return None


def layer_inputs(staged, reps: list[torch.Tensor]) -> dict[int, list[torch.Tensor]]:
    """For every stage j with ``layers``: [x_{j-1}, layer 1, ..., layer L]."""
    out = {}
    with torch.no_grad():
        for j, stage in enumerate(staged.stages, 1):
            if stage.layers is not None:
                out[j] = [reps[j - 1], *stage.layers(reps[j - 1])]
    return out


def intermediate_layers(trained: Trained, analyses: ModularAnalyses, shards: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """``layers_mse.csv`` and ``layers.png`` (one val image; a row per (stage, inverse), a column per
    layer, blank where the shapes differ) under ``out_dir``."""
    fwd = trained.forward
    names = fwd.staged.names
    val = load_split(shards, "val", fwd.image_size, fwd.fit)
    reps = representations(fwd, val.pixels)
    example = len(val.pixels) // 2
    rows, grid = [], []
    with torch.no_grad():
        for j, inputs in layer_inputs(fwd.staged, reps).items():
            for i in range(1, len(reps)):
                fitted = [as_layout(x, reps[i].shape) for x in inputs]
                if all(x is None for x in fitted):
                    continue
                cells = []
                for k, x in enumerate(fitted):
                    if x is None:
                        cells.append(None)
                        continue
                    img = fwd.pixels(chain(trained.modular, x, i))
                    rows.append([names[j - 1], k, len(inputs) - 1, names[i - 1], *ci_row(per_image_mse(img, val.pixels))])
                    cells.append(img[example])
                grid.append([val.pixels[example], *cells])
    if not rows:
        raise ValueError(f"no stage of {fwd.name} exposes intermediate layers of a stage output's shape")
    header = ["stage", "layer", "layers", "inverse_from", "mse", "ci95_low", "ci95_high"]
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "layers_mse.csv", csv_text(header, rows, ".6g"))
    save_grid(grid, out_dir / "layers.png")
    return {"rows": rows}
