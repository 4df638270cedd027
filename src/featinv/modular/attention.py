"""ViT with self-attention removed (the paper's section 4.5): is the class token's attention to the
image tokens what classifies? Every encoder block keeps its attention layer for the class token
(prefix tokens) only: its query sees every token, while an image token's query sees its own key
alone, so no image token mixes with another (its attention output is its own value, projected).
The modified model is scored as it is and after fine-tuning on the task (cross entropy against
:func:`featinv.modular.finetune.train_pairs`' targets, every weight trained, normalisation frozen);
the paper reaches ~69% top-1 on ImageNet-1k fine-tuned against 76% with self-attention.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featinv.config import ModularAnalyses
from featinv.fileio import atomic_write_text, csv_text
from featinv.modular.analysis import ci_row, val_parts
from featinv.modular.finetune import train_pairs
from featinv.modular.stages import ForwardModel
from featinv.modular.trained import Trained, task_targets
from featinv.modular.training import fit


class CrossAttentionOnly(nn.Module):
    """A timm attention layer whose first ``prefix`` tokens attend to every token and every other
    token to itself only."""

    def __init__(self, attn: nn.Module, prefix: int):
        super().__init__()
        self.attn, self.prefix = attn, prefix

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if attn_mask is not None:
            raise ValueError("CrossAttentionOnly sets its own attention mask")
        n = x.shape[1]
        mask = torch.eye(n, dtype=torch.bool, device=x.device)
        mask[:self.prefix] = True
        return self.attn(x, attn_mask=mask, **kwargs)


def cross_attention_only(model: ForwardModel) -> ForwardModel:
    """A copy of a timm VisionTransformer with self-attention among image tokens removed in every block."""
    if not getattr(model, "num_prefix_tokens", 0):
        raise ValueError("removing self-attention keeps the class token's attention: the ViT has no class token")
    model = copy.deepcopy(model)
    for block in model.blocks:
        block.attn = CrossAttentionOnly(block.attn, model.num_prefix_tokens)
    return model


def attention_analysis(trained: Trained, analyses: ModularAnalyses, shards: str | Path, out_dir: str | Path,
                       progress: bool = True) -> dict[str, Any]:
    """``attention.csv`` (top-1 accuracy on the val split with self-attention, without it, and
    without it fine-tuned for ``modular_analyses.attention.steps``) and ``attention.png`` under ``out_dir``."""
    fwd = trained.forward
    if fwd.staged.kind != "vit":
        raise ValueError(f"removing self-attention is an analysis of ViTs; {fwd.name} is not one")
    cfg, params = analyses.attention, trained.params
    original = fwd.staged.model
    removed = cross_attention_only(original).eval()
    tuned = cross_attention_only(original).eval()
    train_x, train_y, target = train_pairs(trained, shards)
    torch.manual_seed(params.seed)
    for p in tuned.parameters():
        p.requires_grad_(True)

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(tuned(train_x[idx]), train_y[idx])

    losses = fit([{"params": tuned.parameters(), "lr": cfg.lr}], loss_of, len(train_x), cfg.steps, params.batch_size,
                 cfg.lr, params.seed, desc="fine-tune without self-attention", progress=progress)
    tuned.requires_grad_(False)
    variants = [("self-attention", original, 0, float("nan")), ("cross-attention only", removed, 0, float("nan")),
                ("cross-attention only, fine-tuned", tuned, cfg.steps, float(np.mean(losses[-5:])))]
    hits: list[list[np.ndarray]] = [[] for _ in variants]
    with torch.no_grad():
        for _, part, reps in val_parts(trained, shards, analyses.batch_size):
            val_y, _ = task_targets(part, reps[-1])  # the unchanged model's targets
            for k, (_, model, _, _) in enumerate(variants):
                logits = reps[-1] if model is original else model(reps[0])  # x_pred is the original's
                hits[k].append((logits.argmax(-1) == val_y).float().numpy())
    rows = [[name, *ci_row(np.concatenate(h)), target, steps, loss]
            for (name, _, steps, loss), h in zip(variants, hits)]
    out_dir = Path(out_dir)
    header = ["variant", "accuracy", "ci95_low", "ci95_high", "target", "finetune_steps", "final_train_loss"]
    atomic_write_text(out_dir / "attention.csv", csv_text(header, rows, ".6g"))
    _plot(rows, target, out_dir / "attention.png")
    return {"rows": rows}


def _plot(rows, target: str, path: Path) -> None:
    from featinv.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.bar([r[0].replace(" only", "\nonly") for r in rows], [r[1] for r in rows],
           yerr=[[r[1] - r[2] for r in rows], [r[3] - r[1] for r in rows]], capsize=3)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"top-1 accuracy (vs {target})")
    ax.set_title("ViT without self-attention among image tokens")
    fig.tight_layout()
    save_figure(fig, path)
