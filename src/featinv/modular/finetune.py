"""Fine-tuning the forward model with a reconstruction loss (the paper's eq. 3, Figs 4-5), for
classifiers:

    L(theta, phi) = lambda * MSE(theta) + (1 - lambda) * task(theta) + MSE(phi)

where phi is a full-path inverse from stage ``modular_analyses.finetune.stage`` (the paper's enc for ViT) to
the image, trained together with the forward weights theta. The reconstruction error reaches theta
scaled by lambda and phi unscaled (a gradient-scaling identity on x_j). The task loss is cross
entropy against the labels where they are the model's classes (ImageNet), otherwise against the
original model's top-1 predictions (the demo's classes are photographs, not ImageNet classes).
Normalisation statistics stay frozen (the model is kept in eval mode, its weights are trained).

For each lambda: pixel MSE of the reconstruction from the stage and accuracy on the val split, next
to the modular and classic inverses of the unchanged model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featinv.config import ModularAnalyses, ModularAnalysesFinetune
from featinv.fileio import atomic_write_text, csv_text
from featinv.modular.analysis import ci_row, example_rows, per_image_mse, save_grid
from featinv.modular.inverses import build_inverses, chain
from featinv.modular.trained import Trained, load_split, representations, task_targets
from featinv.modular.training import fit


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` in the forward pass; its gradient multiplied by ``factor`` in the backward pass."""
    return factor * x + (1.0 - factor) * x.detach()


def finetune_one(trained: Trained, lam: float, j: int, train_x: torch.Tensor, train_y: torch.Tensor,
                 ft: ModularAnalysesFinetune, progress: bool = False) -> tuple[Any, nn.ModuleList, list[float]]:
    """A copy of the forward model and a fresh inverse path from stage j, trained on eq. 3 (``ft``:
    ``modular_analyses.finetune``; the inverse's size and optimiser as the trained inverses')."""
    cfg = trained.params
    torch.manual_seed(cfg.seed)
    staged = trained.forward.copy().staged
    staged.eval()
    for p in staged.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        probe = staged.representations(train_x[:1])
    path = build_inverses(staged, probe, hidden=cfg.hidden, depth=cfg.depth, heads=cfg.heads)[:j]

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        x0 = train_x[idx]
        xj = staged.run(x0, 0, j)
        loss = nn.functional.mse_loss(chain(path, scale_gradient(xj, lam), j), x0)
        if lam < 1.0:
            loss = loss + (1.0 - lam) * nn.functional.cross_entropy(staged.run(xj, j), train_y[idx])
        return loss

    groups = [{"params": staged.parameters(), "lr": ft.lr}, {"params": path.parameters(), "lr": cfg.lr}]
    losses = fit(groups, loss_of, len(train_x), ft.steps, cfg.batch_size, cfg.lr, cfg.seed,
                 desc=f"fine-tune lambda={lam}", progress=progress)
    staged.requires_grad_(False)
    return staged, path.eval(), losses


def finetune(trained: Trained, analyses: ModularAnalyses, shards: str | Path, out_dir: str | Path,
             progress: bool = True) -> dict[str, Any]:
    """``finetune.csv``, ``finetune.png`` (reconstructions) and ``finetune_plot.png`` (MSE vs
    accuracy) under ``out_dir``."""
    fwd = trained.forward
    if not fwd.classifier:
        raise ValueError(f"fine-tuning (eq. 3) is implemented for classifiers; {fwd.name} is not one")
    ft = analyses.finetune
    j = fwd.staged.index(ft.stage)
    train = load_split(shards, "train", fwd.image_size, fwd.fit)
    val = load_split(shards, "val", fwd.image_size, fwd.fit)
    train_reps = representations(fwd, train.pixels)
    val_reps = representations(fwd, val.pixels)
    train_y, target = task_targets(train, train_reps[-1])
    val_y, _ = task_targets(val, val_reps[-1])
    pick = example_rows(len(val.pixels), min(analyses.examples, 6))
    rows, columns = [], [val.pixels[pick]]

    def score(variant, lam, recon, logits, final_loss):
        px = fwd.pixels(recon)
        acc = (logits.argmax(-1) == val_y).float().numpy()
        rows.append([variant, lam, *ci_row(per_image_mse(px, val.pixels)), *ci_row(acc), target, final_loss])
        columns.append(px[pick])

    for lam in ft.lambdas:
        staged, path, losses = finetune_one(trained, float(lam), j, train_reps[0], train_y, ft, progress)
        with torch.no_grad():
            xj = staged.run(val_reps[0], 0, j)
            score("fine-tuned", float(lam), chain(path, xj, j), staged.run(xj, j), float(np.mean(losses[-5:])))
    with torch.no_grad():
        score("modular", float("nan"), chain(trained.modular, val_reps[j], j), val_reps[-1],
              trained.meta["final_loss"]["modular"][j - 1])
        score("classic", float("nan"), chain(trained.classic[j - 1], val_reps[j], j), val_reps[-1],
              trained.meta["final_loss"]["classic"][j - 1])
    header = ["variant", "lambda", "mse", "mse_ci95_low", "mse_ci95_high", "accuracy", "accuracy_ci95_low",
              "accuracy_ci95_high", "accuracy_target", "final_train_loss"]
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "finetune.csv", csv_text(header, rows, ".6g"))
    save_grid([list(col) for col in zip(*columns)], out_dir / "finetune.png")
    _plot(rows, fwd.staged.names[j - 1], target, out_dir / "finetune_plot.png")
    return {"rows": rows}


def _plot(rows, stage: str, target: str, path: Path) -> None:
    from featinv.plots import pyplot, save_figure

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    for r in rows:
        label = f"lambda={r[1]:g}" if r[0] == "fine-tuned" else r[0]
        ax.errorbar(r[5], r[2], xerr=[[r[5] - r[6]], [r[7] - r[5]]], yerr=[[r[2] - r[3]], [r[4] - r[2]]], fmt="o",
                    capsize=2)
        ax.annotate(label, (r[5], r[2]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"accuracy (vs {target})")
    ax.set_ylabel(f"reconstruction MSE from {stage}")
    fig.tight_layout()
    save_figure(fig, path)
