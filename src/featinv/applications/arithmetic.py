"""Feature-space arithmetic (the first paper's section 4.3, Figs 5-6): convex combinations of two
feature maps, and spatial composition (a region of one map's grid replaced by another's)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def interpolate(phi_a: torch.Tensor, phi_b: torch.Tensor, alphas: Sequence[float]) -> torch.Tensor:
    """(len(alphas), C, h, w): (1 - alpha) * phi_a + alpha * phi_b for each alpha."""
    if phi_a.shape != phi_b.shape:
        raise ValueError(f"cannot interpolate feature maps of shapes {tuple(phi_a.shape)} and {tuple(phi_b.shape)}")
    a = torch.tensor(list(alphas), dtype=phi_a.dtype).view(-1, *[1] * phi_a.ndim)
    return (1 - a) * phi_a + a * phi_b


def region_mask(grid: tuple[int, int], box: Sequence[float]) -> torch.Tensor:
    """Bool (h, w): the grid cells inside ``box`` = (top, left, bottom, right) given as fractions of
    the grid (0..1), so the same params fit any backbone's grid; cells count when their centre is in."""
    top, left, bottom, right = box
    if not (0 <= top < bottom <= 1 and 0 <= left < right <= 1):
        raise ValueError(f"region box (top, left, bottom, right) must be fractions with top < bottom, left < right, got {list(box)}")
    h, w = grid
    rows = (torch.arange(h) + 0.5) / h
    cols = (torch.arange(w) + 0.5) / w
    inside_r = (rows >= top) & (rows < bottom)
    inside_c = (cols >= left) & (cols < right)
    mask = inside_r[:, None] & inside_c[None, :]
    if not mask.any():
        raise ValueError(f"region box {list(box)} covers no cell of the {h}x{w} feature grid")
    return mask


def compose(phi_a: torch.Tensor, phi_b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """phi_a with the cells of ``mask`` (h, w) taken from phi_b."""
    if phi_a.shape != phi_b.shape or mask.shape != phi_a.shape[-2:]:
        raise ValueError(f"compose needs maps of one shape and a mask of their grid, got {tuple(phi_a.shape)}, "
                         f"{tuple(phi_b.shape)} and {tuple(mask.shape)}")
    return torch.where(mask, phi_b, phi_a)


def image_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The grid mask at image resolution (nearest), for outlining the region on a reconstruction."""
    return torch.nn.functional.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0] > 0.5


def outline(mask: torch.Tensor) -> torch.Tensor:
    """Bool (H, W): the mask's boundary pixels (inside, with a 4-neighbour outside)."""
    padded = torch.nn.functional.pad(mask[None, None].float(), (1, 1, 1, 1))[0, 0] > 0.5
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior
