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

import numpy as np
import torch

from featinv.config import ModularAnalyses
from featinv.fileio import atomic_write_text, csv_text
from featinv.modular.analysis import ci_row, examples, per_image_mse, save_grid, val_parts
from featinv.modular.inverses import chain
from featinv.modular.trained import Trained


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
    def reconstructions(reps):
        """{(stage j, layer k, inverse i): images} for every layer of a shape an inverse was trained on."""
        out = {}
        for j, inputs in layer_inputs(fwd.staged, reps).items():
            for i in range(1, len(reps)):
                for k, x in enumerate(inputs):
                    if (fitted := as_layout(x, reps[i].shape)) is not None:
                        out[j, k, i] = (fwd.pixels(chain(trained.modular, fitted, i)), len(inputs) - 1)
        return out

    errors: dict[tuple[int, int, int], list] = {}
    layer_count = {}
    with torch.no_grad():
        for _, part, reps in val_parts(trained, shards, analyses.batch_size):
            for key, (img, count) in reconstructions(reps).items():
                errors.setdefault(key, []).append(per_image_mse(img, part.pixels))
                layer_count[key[0]] = count
        _, shown, shown_reps = examples(trained, shards, 1)
        shown_recon = reconstructions(shown_reps)
    if not errors:
        raise ValueError(f"no stage of {fwd.name} exposes intermediate layers of a stage output's shape")
    rows = [[names[j - 1], k, layer_count[j], names[i - 1], *ci_row(np.concatenate(errors[j, k, i]))]
            for j, k, i in sorted(errors, key=lambda key: (key[0], key[2], key[1]))]
    grid = []  # a row per (stage, inverse): the image, then each layer's reconstruction (blank: another shape)
    for j, i in sorted({(j, i) for j, _, i in errors}):
        grid.append([shown.pixels[0], *[shown_recon[j, k, i][0][0] if (j, k, i) in shown_recon else None
                                        for k in range(layer_count[j] + 1)]])
    header = ["stage", "layer", "layers", "inverse_from", "mse", "ci95_low", "ci95_high"]
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "layers_mse.csv", csv_text(header, rows, ".6g"))
    save_grid(grid, out_dir / "layers.png")
    return {"rows": rows}
