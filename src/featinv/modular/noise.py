"""Token noise (the paper's section 4.5, Fig 9): a fraction of the tokens (feature-map positions for a
CNN) of a stage's representation is replaced by one and the same uniform noise vector, plus the
token's position embedding where the stage has one (a ViT's bb), and images are reconstructed with
the modular inverses. For an ``early`` and a ``late`` stage (the paper's bb and enc):

- ``<early>_man``: x_early manipulated, reconstructed from early;
- ``<late>_man``: x_late manipulated, reconstructed from late;
- ``<late>_man+``: x_early manipulated, run forward to late, reconstructed from late.

Besides the figure, the table measures how local the effect is: the mean absolute pixel change
against the unmanipulated reconstruction inside the manipulated positions' image patches and outside
them (ratio >> 1: the representation keeps spatial correspondence, as the paper finds for ViT).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from featinv.config import ModularAnalyses
from featinv.fileio import atomic_write_text, csv_text
from featinv.modular.analysis import ci_row, example_rows, per_image_mse, save_grid
from featinv.modular.inverses import chain, square_layouts
from featinv.modular.trained import Trained, load_split, representations


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
    val = load_split(shards, "val", fwd.image_size, fwd.fit)
    reps = representations(fwd, val.pixels)
    gen = torch.Generator().manual_seed(tn.seed)
    grid_hint = getattr(staged, "grid", None)
    manipulated, masks = {}, {}
    for j in (early, late):
        prefix, grid = layout(reps[j], grid_hint)
        positions = pick_positions(grid, tn.fraction, gen)
        width = reps[j].shape[1] if reps[j].ndim == 4 else reps[j].shape[-1]
        noise = tn.low + (tn.high - tn.low) * torch.rand(width, generator=gen)
        pos_fn = staged.stages[j - 1].position
        with torch.no_grad():
            manipulated[j] = replace_positions(reps[j], positions, noise, prefix, pos_fn() if pos_fn else None)
        masks[j] = pixel_mask(positions, grid, fwd.image_size)
    e_name, l_name = staged.names[early - 1], staged.names[late - 1]
    with torch.no_grad():
        default = {j: fwd.pixels(chain(trained.modular, reps[j], j)) for j in (early, late)}
        settings = {
            f"{e_name}_man": (early, early, fwd.pixels(chain(trained.modular, manipulated[early], early))),
            f"{l_name}_man": (late, late, fwd.pixels(chain(trained.modular, manipulated[late], late))),
            f"{l_name}_man+": (early, late, fwd.pixels(chain(trained.modular, staged.run(manipulated[early], early, late),
                                                             late))),
        }
    rows = []
    for name, (at, frm, img) in settings.items():
        change = (img - default[frm]).abs().mean(1, keepdim=True)  # (N, 1, H, W)
        inside = masks[at].expand_as(change)
        c_in = (change * inside).flatten(1).sum(1) / inside.flatten(1).sum(1)
        c_out = (change * ~inside).flatten(1).sum(1) / (~inside).flatten(1).sum(1).clamp(min=1)
        rows.append([name, staged.names[at - 1], staged.names[frm - 1], int(masks[at].sum()),
                     *ci_row(per_image_mse(img, default[frm])), *ci_row(per_image_mse(img, val.pixels)),
                     float(c_in.mean()), float(c_out.mean()), float(c_in.mean() / c_out.mean().clamp(min=1e-12))])
    header = ["setting", "manipulated_at", "reconstructed_from", "manipulated_pixels", "mse_vs_default",
              "mse_vs_default_ci95_low", "mse_vs_default_ci95_high", "mse_vs_image", "mse_vs_image_ci95_low",
              "mse_vs_image_ci95_high", "change_inside", "change_outside", "inside_outside_ratio"]
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "token_noise.csv", csv_text(header, rows, ".6g"))
    pick = example_rows(len(val.pixels), min(analyses.examples, 4))
    grid_rows = [[val.pixels[i], default[early][i], settings[f"{e_name}_man"][2][i], default[late][i],
                  settings[f"{l_name}_man"][2][i], settings[f"{l_name}_man+"][2][i]] for i in pick.tolist()]
    save_grid(grid_rows, out_dir / "token_noise.png")
    return {"rows": rows}
