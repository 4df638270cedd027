"""Fine-tuning the forward model with a reconstruction loss (the paper's eq. 3, Figs 4-5):

    L(theta, phi) = lambda * MSE(theta) + (1 - lambda) * L_OBJ(theta) + MSE(phi)

where phi is a full-path inverse from stage ``modular_analyses.finetune.stage`` (the paper's enc for
ViT, dec for DETR) to the image, trained together with the forward weights theta. The reconstruction
error reaches theta scaled by lambda and phi unscaled (a gradient-scaling identity on x_j).
L_OBJ is the model's own objective:

- classifiers: cross entropy against the labels where they are the model's classes (ImageNet),
  otherwise against the original model's top-1 predictions (the demo's classes are photographs, not
  ImageNet classes); scored by top-1 accuracy (bootstrap interval over images);
- DETR: its Hungarian-matched detection loss (:func:`featinv.modular.boxes.detr_loss`) against the
  train split's COCO boxes; scored by COCO box AP at IoU 0.50:0.95 (pycocotools, every query's best
  class; no interval: AP is not a mean over images).

Normalisation statistics stay frozen (the model is kept in eval mode, its weights are trained).
For each lambda: pixel MSE of the reconstruction from the stage and the score on the val split,
next to the modular and classic inverses of the unchanged model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featinv.config import ModularAnalyses, ModularAnalysesFinetune
from featinv.fileio import atomic_write_text, csv_text
from featinv.modular.analysis import ci_row, examples, per_image_mse, save_grid, val_parts
from featinv.modular.boxes import box_ap, detr_loss, detr_targets, ground_truth, scored_detections
from featinv.modular.inverses import build_inverses, chain, classic_path
from featinv.modular.representations import stage_rows
from featinv.modular.trained import REPRESENTATIONS, Trained, split_index, split_objects, task_targets
from featinv.modular.training import fit

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_n of a batch, its train rows) -> L_OBJ


def scale_gradient(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` in the forward pass; its gradient multiplied by ``factor`` in the backward pass."""
    return factor * x + (1.0 - factor) * x.detach()


def finetune_one(trained: Trained, lam: float, j: int, train_x: torch.Tensor, objective: Objective,
                 ft: ModularAnalysesFinetune, progress: bool = False) -> tuple[Any, nn.ModuleList, list[float]]:
    """A copy of the forward model and a fresh inverse path from stage j, trained on eq. 3 with
    L_OBJ = ``objective`` (``ft``: ``modular_analyses.finetune``; the inverse's size and optimiser
    as the trained inverses')."""
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
            loss = loss + (1.0 - lam) * objective(staged.run(xj, j), idx)
        return loss

    groups = [{"params": staged.parameters(), "lr": ft.lr}, {"params": path.parameters(), "lr": cfg.lr}]
    losses = fit(groups, loss_of, len(train_x), ft.steps, cfg.batch_size, cfg.lr, cfg.seed,
                 desc=f"fine-tune lambda={lam}", progress=progress)
    staged.requires_grad_(False)
    return staged, path.eval(), losses


def train_representations(trained: Trained) -> list:
    """The train split's [x_0 (normalised images), ..., x_n]: rows of train_modular's representation
    store, read per batch when they do not fit in memory."""
    if trained.model_dir is None:
        raise ValueError("fine-tuning reads the train split's representations beside the inverses: load them "
                         "with load_trained")
    return stage_rows(trained.model_dir / REPRESENTATIONS)


def train_pairs(trained: Trained, shards: str | Path, block: int = 256):
    """The train split's x_0 and their classification targets (labels for ImageNet-1k classes,
    else the model's own top-1, from the store's x_n block by block), and the targets' name."""
    from featinv.data.shards import load_manifest

    reps = train_representations(trained)
    x_pred = reps[-1]
    if load_manifest(shards).get("label_space") == "imagenet-1k" and x_pred.shape[-1] == 1000:
        return reps[0], torch.tensor([e.cls for e in split_index(shards, "train")]), "label"
    top1 = torch.cat([x_pred[s:s + block].argmax(-1) for s in range(0, len(x_pred), block)])
    return reps[0], top1, "original top-1"


def objective(trained: Trained, shards: str | Path) -> tuple[torch.Tensor, Objective, str]:
    """The train split's x_0, the forward model's L_OBJ over its rows, and the val score's name."""
    fwd = trained.forward
    if fwd.staged.kind == "detr":
        model = fwd.staged.model
        labels = [detr_targets(ground_truth(objs), fwd.image_size, model.config.num_labels)
                  for objs in split_objects(shards, "train", fwd.image_size, fwd.fit)]

        def detection_loss(x_pred: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
            return detr_loss(model, x_pred, [labels[i] for i in idx.tolist()])

        return train_representations(trained)[0], detection_loss, "box AP"
    if not fwd.classifier:
        raise ValueError(f"fine-tuning (eq. 3) needs the objective of {fwd.name}: implemented for classifiers and DETR")
    train_x, train_y, target = train_pairs(trained, shards)
    return train_x, lambda logits, idx: nn.functional.cross_entropy(logits, train_y[idx]), f"accuracy vs {target}"


class _Score:
    """The val split's task score, part by part: top-1 accuracy against the unchanged model's
    targets (with its interval), or DETR's COCO box AP."""

    def __init__(self, trained: Trained):
        self.forward = trained.forward
        self.values: list[Any] = []

    def add(self, part, reps: list[torch.Tensor], x_pred: torch.Tensor) -> None:
        if self.forward.staged.kind == "detr":
            self.values += scored_detections(part.objects, x_pred, self.forward.image_size)
        else:
            val_y, _ = task_targets(part, reps[-1])
            self.values.append((x_pred.argmax(-1) == val_y).float().numpy())

    def result(self) -> list[float]:
        """[score, ci low, ci high]."""
        if self.forward.staged.kind == "detr":
            return [box_ap(self.values)["AP"], float("nan"), float("nan")]
        return ci_row(np.concatenate(self.values))


def finetune(trained: Trained, analyses: ModularAnalyses, shards: str | Path, out_dir: str | Path,
             progress: bool = True) -> dict[str, Any]:
    """``finetune.csv``, ``finetune.png`` (reconstructions) and ``finetune_plot.png`` (MSE vs
    the task score) under ``out_dir``."""
    fwd = trained.forward
    ft = analyses.finetune
    j = fwd.staged.index(ft.stage)
    train_x, task, target = objective(trained, shards)
    rows, columns = [], []
    _, shown, shown_reps = examples(trained, shards, min(analyses.examples, 6))
    columns.append(shown.pixels)

    @torch.no_grad()
    def score(variant, lam, run, final_loss):
        """Stream the val split through ``run(reps) -> (reconstruction, x_n)``."""
        errors, task_score = [], _Score(trained)
        for _, part, reps in val_parts(trained, shards, analyses.batch_size):
            recon, x_pred = run(reps)
            errors.append(per_image_mse(fwd.pixels(recon), part.pixels))
            task_score.add(part, reps, x_pred)
        rows.append([variant, lam, *ci_row(np.concatenate(errors)), *task_score.result(), target, final_loss])
        columns.append(fwd.pixels(run(shown_reps)[0]))

    for lam in ft.lambdas:
        staged, path, losses = finetune_one(trained, float(lam), j, train_x, task, ft, progress)

        def tuned(reps, staged=staged, path=path):
            xj = staged.run(reps[0], 0, j)
            return chain(path, xj, j), staged.run(xj, j)

        score("fine-tuned", float(lam), tuned, float(np.mean(losses[-5:])))
    score("modular", float("nan"), lambda reps: (chain(trained.modular, reps[j], j), reps[-1]),
          trained.meta["final_loss"]["modular"][j - 1])
    score("classic", float("nan"), lambda reps: (chain(classic_path(trained.classic, j), reps[j], j), reps[-1]),
          trained.meta["final_loss"]["classic"][j - 1])
    header = ["variant", "lambda", "mse", "mse_ci95_low", "mse_ci95_high", "score", "score_ci95_low",
              "score_ci95_high", "score_name", "final_train_loss"]
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
        xerr = None if np.isnan(r[6]) else [[r[5] - r[6]], [r[7] - r[5]]]
        ax.errorbar(r[5], r[2], xerr=xerr, yerr=[[r[2] - r[3]], [r[4] - r[2]]], fmt="o", capsize=2)
        ax.annotate(label, (r[5], r[2]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(target)
    ax.set_ylabel(f"reconstruction MSE from {stage}")
    fig.tight_layout()
    save_figure(fig, path)
