"""Figures for the report: image grids and the pixel-range conversions they need, training-loss
curves, and the matplotlib set-up every figure shares."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def image_grid(rows: Sequence[Sequence[np.ndarray | None]], pad: int = 2) -> Image.Image:
    """A grid of HWC uint8 images, one list per grid row, on white (None leaves a cell blank)."""
    h, w = next(img for row in rows for img in row if img is not None).shape[:2]
    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            if img is None:
                continue
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            canvas[y : y + h, x : x + w] = img
    return Image.fromarray(canvas)


def labelled_grid(rows: list[list[np.ndarray]], labels: list[str], title: str, out_png: str | Path) -> None:
    """An image grid (one list per row) with each row's label on its left and a title, as a PNG."""
    plt = pyplot()
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.1 * n_cols + 1.6, 1.1 * n_rows + 0.5), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(row) and row[j] is not None:
                ax.imshow(row[j])
        axes[i][0].set_ylabel(labels[i], rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_png, dpi=110)


def spread_rows(total: int, n: int) -> np.ndarray:
    """Up to ``n`` row indices evenly spaced over ``total`` rows (so over the classes, which are contiguous)."""
    return np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(int))


def hwc(chw: np.ndarray) -> np.ndarray:
    """(C, H, W) -> contiguous (H, W, C)."""
    return np.ascontiguousarray(chw.transpose(1, 2, 0))


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] (the diffusion range) -> uint8 in [0, 255], same layout."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def unit_to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [0, 1] -> uint8 in [0, 255], same layout."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display on CI or cluster nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 100) -> None:
    """Write ``fig`` to ``path`` (parents created) and free it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


def _read_loss(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "step" not in rows[0] or "loss" not in rows[0]:
        raise ValueError(f"{path}: expected a CSV with columns step,loss")
    return np.array([int(r["step"]) for r in rows]), np.array([float(r["loss"]) for r in rows])


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing running mean over ``window`` steps (shorter at the start)."""
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (cumsum[idx] - cumsum[lo]) / (idx - lo)


def plot_losses(csvs: list[str | Path], out_png: str | Path, window: int = 20) -> None:
    """One panel per model group (the base model; the ControlNets), one line per loss CSV, raw loss
    faint and its running mean solid."""
    plt = pyplot()
    groups = {"base model": [p for p in csvs if Path(p).name == "base-loss.csv"],
              "ControlNets": [p for p in csvs if Path(p).name != "base-loss.csv"]}
    groups = {k: v for k, v in groups.items() if v}
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4), squeeze=False)
    for ax, (title, paths) in zip(axes[0], groups.items()):
        for path in paths:
            steps, loss = _read_loss(path)
            line, = ax.plot(steps, smooth(loss, window), label=Path(path).name.removesuffix("-loss.csv"))
            ax.plot(steps, loss, color=line.get_color(), alpha=0.2, linewidth=0.8)
        ax.set(title=title, xlabel="step", ylabel="training loss", yscale="log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out_png)
