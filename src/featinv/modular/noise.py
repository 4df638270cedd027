"""Token noise (the paper's section 4.5, Fig 9): a fraction of the tokens (feature-map positions for a
CNN) of a stage's representation is replaced by one and the same uniform noise vector, plus the
token's position embedding where the stage has one (a ViT's bb), and images are reconstructed with
the modular inverses. For an ``early`` and a ``late`` stage (the paper's bb and enc):

- ``<early>_man``: x_early manipulated, reconstructed from early;
- ``<late>_man``: x_late manipulated, reconstructed from late;
- ``<late>_man+``: x_early manipulated, run forward to late, reconstructed from late.

Where the first stage gives a map (a CNN's stem, DETR's bb), each setting is also reconstructed
with the first stage's local inverse (the paper's local inverse backbone: each position to its own
patch), which isolates the later stage's spatial mixing from the backbone inverse's.

Besides the figure, the table measures how local the effect is: the mean absolute pixel change
against the unmanipulated reconstruction inside the manipulated positions' image patches and outside
them (ratio >> 1: the representation keeps spatial correspondence, as the paper finds for ViT).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from featinv.config import ModularAnalyses
from featinv.fileio import atomic_write_text, csv_text
from featinv.modular.analysis import ci_row, examples, per_image_mse, save_grid, val_parts
from featinv.modular.inverses import chain, square_layouts
from featinv.modular.trained import Trained


def layout(x: torch.Tensor, grid: tuple[int, int] | None = None) -> tuple[int, tuple[int, int]]:
    """(prefix tokens, (h, w) grid) of a representation: a map (B, C, h, w) or tokens (B, T, D) whose
    patch tokens fill ``grid`` or, without one, a square after up to 8 prefix tokens (as the
    patch-embedding inverse places them)."""
    if x.ndim == 4:
        return 0, (x.shape[-2], x.shape[-1])
    if x.ndim != 3:
        raise ValueError(f"token noise needs a map (B, C, h, w) or tokens (B, T, D), got shape {tuple(x.shape)}")
    n = x.shape[1]
    if grid is not None and grid[0] * grid[1] == n:
        return 0, grid
    for prefix, side in square_layouts(n):
        return prefix, (side, side)
    raise ValueError(f"{n} tokens do not form a grid")


def pick_positions(grid: tuple[int, int], fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Indices (row-major) of round(fraction * h * w) positions, at least one."""
    total = grid[0] * grid[1]
    k = max(1, round(fraction * total))
    return torch.randperm(total, generator=gen)[:k].sort().values


def replace_positions(x: torch.Tensor, positions: torch.Tensor, noise: torch.Tensor, prefix: int = 0,
                      position: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of ``x`` with the grid ``positions`` set to ``noise`` (a channel vector), plus the
    tokens' position embedding ``position`` ((T, D)) when given."""
    out = x.clone()
    if x.ndim == 4:
        flat = out.flatten(2)
        flat[:, :, positions] = noise.view(1, -1, 1).to(x.dtype)
        return flat.view_as(x)
    tokens = prefix + positions
    value = noise.view(1, 1, -1).to(x.dtype)
    if position is not None:
        value = value + position[tokens].unsqueeze(0).to(x.dtype)
    out[:, tokens] = value.expand(x.shape[0], -1, -1)
    return out


def pixel_mask(positions: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(1, 1, H, W) bool: the image area of the grid positions (nearest upsampling)."""
    cells = torch.zeros(grid[0] * grid[1])
    cells[positions] = 1.0
    up = torch.nn.functional.interpolate(cells.view(1, 1, *grid), size=size, mode="nearest")
    return up > 0.5


def token_noise(trained: Trained, analyses: ModularAnalyses, shards: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """``token_noise.csv`` and ``token_noise.png`` under ``out_dir`` (params: ``modular_analyses.token_noise``)."""
    tn = analyses.token_noise
    fwd = trained.forward
    staged = fwd.staged
    early, late = (staged.index(s) for s in tn.stages)
    if not early < late:
        raise ValueError(f"modular_analyses.token_noise.stages: '{tn.stages[0]}' must come before '{tn.stages[1]}'")
    gen = torch.Generator().manual_seed(tn.seed)
    grid_hint = staged.grid
    with torch.no_grad():  # positions and noise depend on the shapes only: drawn once, for every image
        probe = staged.representations(fwd.normalise(torch.zeros(1, 3, *fwd.image_size)))
    plan, masks = {}, {}
    for j in (early, late):
        prefix, grid = layout(probe[j], grid_hint)
        positions = pick_positions(grid, tn.fraction, gen)
        width = probe[j].shape[1] if probe[j].ndim == 4 else probe[j].shape[-1]
        noise = tn.low + (tn.high - tn.low) * torch.rand(width, generator=gen)
        pos_fn = staged.stage_list[j - 1].position
        plan[j] = (positions, noise, prefix, pos_fn() if pos_fn else None)
        masks[j] = pixel_mask(positions, grid, fwd.image_size)
    e_name, l_name = staged.names[early - 1], staged.names[late - 1]
    # the first stage's inverse: the modular one and, where trained, the local one (section 4.5)
    paths = {"modular": trained.modular}
    if trained.local_first is not None:
        paths["local"] = torch.nn.ModuleList([trained.local_first, *trained.modular[1:]])
    # setting -> (manipulated at, reconstructed from, first-stage inverse)
    settings: dict[str, tuple[int, int, str]] = {}
    for kind in paths:
        tag = "" if kind == "modular" else " local"
        settings |= {f"{e_name}_man{tag}": (early, early, kind), f"{l_name}_man{tag}": (late, late, kind),
                     f"{l_name}_man+{tag}": (early, late, kind)}

    @torch.no_grad()
    def reconstruct(reps):
        """The unmanipulated reconstructions {(kind, j): images} and each setting's."""
        man = {j: replace_positions(reps[j], *plan[j]) for j in (early, late)}
        default = {(kind, j): fwd.pixels(chain(path, reps[j], j)) for kind, path in paths.items() for j in (early, late)}
        made = {}
        for name, (at, frm, kind) in settings.items():
            x = man[at] if at == frm else staged.run(man[at], at, frm)
            made[name] = fwd.pixels(chain(paths[kind], x, frm))
        return default, made

    stats: dict[str, dict[str, list[Any]]] = {name: {"default": [], "image": [], "in": [], "out": []} for name in settings}
    for _, part, reps in val_parts(trained, shards, analyses.batch_size):
        default, made = reconstruct(reps)
        for name, (at, frm, kind) in settings.items():
            change = (made[name] - default[kind, frm]).abs().mean(1, keepdim=True)  # (N, 1, H, W)
            inside = masks[at].expand_as(change)
            stats[name]["in"].append(((change * inside).flatten(1).sum(1) / inside.flatten(1).sum(1)).numpy())
            stats[name]["out"].append(((change * ~inside).flatten(1).sum(1)
                                       / (~inside).flatten(1).sum(1).clamp(min=1)).numpy())
            stats[name]["default"].append(per_image_mse(made[name], default[kind, frm]))
            stats[name]["image"].append(per_image_mse(made[name], part.pixels))
    rows = []
    for name, (at, frm, kind) in settings.items():
        s = {k: np.concatenate(v) for k, v in stats[name].items()}
        rows.append([name, staged.names[at - 1], staged.names[frm - 1], kind, int(masks[at].sum()), *ci_row(s["default"]),
                     *ci_row(s["image"]), float(s["in"].mean()), float(s["out"].mean()),
                     float(s["in"].mean() / s["out"].mean()) if s["out"].mean() > 0 else float("inf")])
    header = ["setting", "manipulated_at", "reconstructed_from", "first_inverse", "manipulated_pixels", "mse_vs_default",
              "mse_vs_default_ci95_low", "mse_vs_default_ci95_high", "mse_vs_image", "mse_vs_image_ci95_low",
              "mse_vs_image_ci95_high", "change_inside", "change_outside", "inside_outside_ratio"]
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "token_noise.csv", csv_text(header, rows, ".6g"))
    _, shown, shown_reps = examples(trained, shards, min(analyses.examples, 4))
    default, made = reconstruct(shown_reps)
    # per example and first-stage inverse a row: image, default early, early_man, default late, late_man, late_man+
    grid_rows = [[shown.pixels[i], default[kind, early][i], made[f"{e_name}_man{tag}"][i], default[kind, late][i],
                  made[f"{l_name}_man{tag}"][i], made[f"{l_name}_man+{tag}"][i]]
                 for i in range(len(shown.pixels)) for kind, tag in ((k, "" if k == "modular" else " local") for k in paths)]
    save_grid(grid_rows, out_dir / "token_noise.png")
    return {"rows": rows}
