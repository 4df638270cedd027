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

import numpy as np
import torch

from featinv.config import ModularAnalyses
from featinv.fileio import atomic_write_text, csv_text
from featinv.modular.analysis import ci_row, examples, per_image_mse, save_grid, val_parts
from featinv.modular.inverses import chain
from featinv.modular.onehot import one_hot
from featinv.modular.trained import Trained


def prediction_inverses(trained: Trained, analyses: ModularAnalyses, shards: str | Path,
                        out_dir: str | Path) -> dict[str, Any]:
    """``prediction_mse.csv`` and ``prediction.png`` (per example: the image, the modular
    reconstruction from every stage, then from pred through pred_OH^-1) under ``out_dir``."""
    fwd = trained.forward
    if trained.pred_one_hot is None:
        raise ValueError("these inverses were saved without the one-hot prediction-head inverse: retrain them "
                         "(featinv train-modular)")
    n = len(fwd.staged.names)
    boxes = fwd.staged.boxes
    variants = {"full distribution": ("pred_FD", trained.modular[n - 1], lambda x: x),
                "one-hot": ("pred_OH", trained.pred_one_hot, lambda x: one_hot(x, boxes))}

    def through(inverse, prepare, reps):
        """(x_{n-1} reconstructed from x_pred, the image chained on from it)."""
        before = inverse(prepare(reps[n]))
        return before, fwd.pixels(chain(trained.modular, before, n - 1))

    stats: dict[str, dict[str, list[Any]]] = {v: {"image": [], "rep": [], "kept": []} for v in variants}
    with torch.no_grad():
        for _, part, reps in val_parts(trained, shards, analyses.batch_size):
            for variant, (_, inverse, prepare) in variants.items():
                before, img = through(inverse, prepare, reps)
                stats[variant]["image"].append(per_image_mse(img, part.pixels))
                stats[variant]["rep"].append(per_image_mse(before, reps[n - 1]))
                if fwd.classifier:  # does the reconstruction keep the original's top-1 class?
                    top1 = fwd.staged.run(fwd.normalise(img)).argmax(-1) == reps[n].argmax(-1)
                    stats[variant]["kept"].append(top1.float().numpy())
        _, shown, shown_reps = examples(trained, shards, analyses.examples)
        columns = [shown.pixels, *[fwd.pixels(chain(trained.modular, shown_reps[j], j)) for j in range(1, n)],
                   *[through(inverse, prepare, shown_reps)[1] for _, inverse, prepare in variants.values()]]
    final = trained.meta["final_loss"]
    losses = {"full distribution": final["modular"][n - 1], "one-hot": final["pred_one_hot"][0]}
    rows = [[variant, variants[variant][0], *ci_row(np.concatenate(s["image"])), *ci_row(np.concatenate(s["rep"])),
             float(np.concatenate(s["kept"]).mean()) if s["kept"] else float("nan"), losses[variant]]
            for variant, s in stats.items()]
    header = ["pred_input", "inverse", "mse", "ci95_low", "ci95_high", f"{fwd.staged.names[n - 2]}_mse",
              f"{fwd.staged.names[n - 2]}_ci95_low", f"{fwd.staged.names[n - 2]}_ci95_high", "top1_kept",
              "final_train_loss"]
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "prediction_mse.csv", csv_text(header, rows, ".6g"))
    save_grid([list(col) for col in zip(*columns)], out_dir / "prediction.png")
    return {"rows": rows, "columns": ["input", *fwd.staged.names[:-1], "pred_FD", "pred_OH"]}

