"""Inverse components, one per forward stage, each mapping x_j back to x_{j-1} (the paper's eq. 1),
chosen by the shapes of the two representations:

- map -> map (a CNN stage, downsampling by 2^k): 3x3 convolution, k transposed convolutions
  (stride 2) with GroupNorm + SiLU, 3x3 convolution to the input's channels;
- tokens -> image (a patch embedding): prefix (class) tokens dropped, patch tokens on their grid,
  a transposed convolution with kernel = stride = patch size;
- tokens -> tokens (transformer blocks): ``depth`` transformer blocks and a linear map;
- vector -> anything (a prediction head): a two-layer MLP reshaped to the input's shape.

``chain(inverses, x_j, j)`` applies inverses j, j-1, ..., 1: the image-level reconstruction from
stage j (eq. 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


class ConvInverse(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, upsample: int, hidden: int):
        super().__init__()
        steps = int(round(math.log2(upsample)))
        if 2**steps != upsample:
            raise ValueError(f"a CNN stage inverse upsamples by a power of two, not {upsample}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 3, padding=1), nn.GroupNorm(_groups(hidden), hidden), nn.SiLU()]
        for _ in range(steps):
            layers += [nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1), nn.GroupNorm(_groups(hidden), hidden), nn.SiLU()]
        layers.append(nn.Conv2d(hidden, out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchInverse(nn.Module):
    """Patch tokens (B, prefix + h*w, D) -> image (B, C, h*p, w*p)."""

    def __init__(self, dim: int, out_channels: int, grid: tuple[int, int], patch: int, prefix: int):
        super().__init__()
        self.grid, self.prefix = grid, prefix
        self.net = nn.ConvTranspose2d(dim, out_channels, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x[:, self.prefix:]
        b, n, d = tokens.shape
        return self.net(tokens.transpose(1, 2).reshape(b, d, *self.grid))


class TokenInverse(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, depth: int, heads: int):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.blocks = nn.Sequential(*[Block(in_dim, num_heads=heads) for _ in range(depth)])
        self.out = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(x))


class MlpInverse(nn.Module):
    def __init__(self, in_features: int, out_shape: Sequence[int], hidden: int):
        super().__init__()
        self.out_shape = tuple(out_shape)
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, math.prod(out_shape)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(x.shape[0], *self.out_shape)


def inverse_for(x_prev: torch.Tensor, x_next: torch.Tensor, hidden: int = 64, depth: int = 1,
                heads: int = 4) -> nn.Module:
    """The inverse component mapping representations shaped like ``x_next`` to ones like ``x_prev``
    (both with a batch dimension)."""
    prev, nxt = tuple(x_prev.shape[1:]), tuple(x_next.shape[1:])
    if len(nxt) == 1:
        return MlpInverse(nxt[0], prev, hidden)
    if len(prev) == 3 and len(nxt) == 3 and x_next.ndim == 4:
        if prev[1] % nxt[1] or prev[1] // nxt[1] != prev[2] // nxt[2]:
            raise ValueError(f"cannot invert a CNN stage from {nxt} to {prev}: not an integer downsampling")
        return ConvInverse(nxt[0], prev[0], prev[1] // nxt[1], hidden)
    if len(prev) == 3 and len(nxt) == 2:
        n_tokens, dim = nxt
        for prefix in range(0, 9):  # class / register / distillation tokens come first
            side = math.isqrt(n_tokens - prefix)
            if side * side == n_tokens - prefix and prev[1] % side == 0:
                return PatchInverse(dim, prev[0], (side, side), prev[1] // side, prefix)
        raise ValueError(f"cannot place {n_tokens} tokens on a square grid for an image of {prev}")
    if len(prev) == 2 and len(nxt) == 2:
        if prev[0] != nxt[0]:
            raise ValueError(f"token stages must keep the token count, got {nxt} -> {prev}")
        return TokenInverse(nxt[1], prev[1], depth, heads)
    raise ValueError(f"no inverse component for {nxt} -> {prev}")


def build_inverses(representations: Sequence[torch.Tensor], **kw) -> nn.ModuleList:
    """Inverse j (index j-1) maps x_j to x_{j-1}, for every stage j = 1..n."""
    return nn.ModuleList(inverse_for(a, b, **kw) for a, b in zip(representations[:-1], representations[1:]))


def chain(inverses: Sequence[nn.Module], x: torch.Tensor, j: int) -> torch.Tensor:
    """Image-level reconstruction from x_j: inverses j, j-1, ..., 1 applied in turn."""
    for inverse in reversed(inverses[:j]):
        x = inverse(x)
    return x
