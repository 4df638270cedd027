"""Prediction-head inverses with the full class distribution and with one-hot (the paper's section
4.4, Fig 8): ``pred_FD^-1`` sees x_pred as the model emits it (every class logit, and DETR's boxes),
``pred_OH^-1`` only the top-1 class as a one-hot vector (boxes kept), so it cannot use the
uncertainty and low-confidence classes. Both are trained in ``train_modular`` with the same
optimisation (pred_FD^-1 is the modular pred^-1); this analysis reconstructs the val split through
each, chained on through the modular inverses below pred.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from featinv.config import ModularAnalyses
from featinv.fileio import atomic_write_text, csv_text
from featinv.modular.analysis import ci_row, example_rows, per_image_mse, save_grid
from featinv.modular.inverses import chain
from featinv.modular.onehot import one_hot
from featinv.modular.trained import Trained, load_split, representations


def prediction_inverses(trained: Trained, analyses: ModularAnalyses, shards: str | Path,
                        out_dir: str | Path) -> dict[str, Any]:
    """``prediction_mse.csv`` and ``prediction.png`` (per example: the image, the modular
    reconstruction from every stage, then from pred through pred_OH^-1) under ``out_dir``."""
    fwd = trained.forward
    if trained.pred_one_hot is None:
        raise ValueError("these inverses were saved without the one-hot prediction-head inverse: retrain them "
                         "(featinv train-modular)")
    n = len(fwd.staged.names)
    boxes = getattr(fwd.staged, "boxes", 0)
    val_px = load_split(shards, "val", fwd.image_size, fwd.fit).pixels
    reps = representations(fwd, val_px)
    x_pred = reps[n]
    with torch.no_grad():
        x_before = {"full distribution": trained.modular[n - 1](x_pred),
                    "one-hot": trained.pred_one_hot(one_hot(x_pred, boxes))}
        images = {k: fwd.pixels(chain(trained.modular, x, n - 1)) for k, x in x_before.items()}
        final = trained.meta["final_loss"]
        losses = {"full distribution": final["modular"][n - 1], "one-hot": final["pred_one_hot"][0]}
        rows = []
        for variant, img in images.items():
            kept = float("nan")
            if fwd.classifier:  # does the reconstruction keep the original's top-1 class?
                kept = float((fwd.staged.run(fwd.normalise(img)).argmax(-1) == x_pred.argmax(-1)).float().mean())
            rows.append([variant, "pred_FD" if variant == "full distribution" else "pred_OH",
                         *ci_row(per_image_mse(img, val_px)), *ci_row(per_image_mse(x_before[variant], reps[n - 1])), kept, losses[variant]])
        pick = example_rows(len(val_px), analyses.examples)
        stage_recon = [fwd.pixels(chain(trained.modular, reps[j], j))[pick] for j in range(1, n)]
    header = ["pred_input", "inverse", "mse", "ci95_low", "ci95_high", f"{fwd.staged.names[n - 2]}_mse",
              f"{fwd.staged.names[n - 2]}_ci95_low", f"{fwd.staged.names[n - 2]}_ci95_high", "top1_kept",
              "final_train_loss"]
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "prediction_mse.csv", csv_text(header, rows, ".6g"))
    columns = [val_px[pick], *stage_recon, images["full distribution"][pick], images["one-hot"][pick]]
    save_grid([list(col) for col in zip(*columns)], out_dir / "prediction.png")
    return {"rows": rows, "columns": ["input", *fwd.staged.names[:-1], "pred_FD", "pred_OH"]}

