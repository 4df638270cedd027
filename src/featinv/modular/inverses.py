"""Inverse components, one per forward stage, each mapping x_j back to x_{j-1} (the paper's eq. 1).
The stage names the kind (:class:`featinv.modular.stages.Stage`); the shapes of x_{j-1} and x_j fix
the sizes:

- ``conv`` (a downsampling CNN stage, a DETR backbone): 3x3 convolution, log2(factor) transposed
  convolutions (stride 2) with GroupNorm + SiLU, 3x3 convolution to the input's channels;
- ``patch`` (a ViT patch embedding): prefix (class) tokens dropped, patch tokens placed on their
  grid, a stack of stride-2 transposed convolutions up to the patch size;
- ``tokens`` (transformer blocks): transformer blocks and a linear map;
- ``tokens_to_map`` (DETR's encoder, whose input is a flattened map): as ``tokens``, reshaped to the map;
- ``queries_to_tokens`` (DETR's decoder): blank learned queries, one per output token, cross-attend
  to the decoded object queries;
- ``mlp`` (a classification head): a two-layer MLP from the logits, reshaped to the input's shape;
- ``per_token_mlp`` (DETR's prediction head): the same MLP applied to every query;
- ``local`` (the paper's local inverse backbone, section 4.5): each position of a map (B, C, h, w)
  reconstructs its own f x f image patch alone (1x1 convolutions, then pixel shuffle), so nothing
  mixes across positions.

``chain(inverses, x_j, j)`` applies inverses j, j-1, ..., 1: the image-level reconstruction from
stage j (eq. 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

import torch
from torch import nn


def _groups(channels: int) -> int:
    """GroupNorm groups: up to 8, at least 2 channels each (so a single image's 1x1 map normalises)."""
    return math.gcd(channels, max(1, min(8, channels // 2)))


class ConvInverse(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, upsample: int, hidden: int):
        super().__init__()
        steps = int(round(math.log2(upsample)))
        if upsample < 1 or 2**steps != upsample:
            raise ValueError(f"a CNN stage inverse upsamples by a power of two, not {upsample}")
        norm = lambda: nn.GroupNorm(_groups(hidden), hidden)  # noqa: E731
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 3, padding=1), norm(), nn.SiLU()]
        for _ in range(steps):
            layers += [nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1), norm(), nn.SiLU()]
        layers.append(nn.Conv2d(hidden, out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LocalInverse(nn.Module):
    """Map (B, C, h, w) -> (B, C_out, h*f, w*f), every output patch from its own position only."""

    def __init__(self, in_channels: int, out_channels: int, factor: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, hidden, 1), nn.SiLU(),
                                 nn.Conv2d(hidden, out_channels * factor * factor, 1), nn.PixelShuffle(factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchInverse(nn.Module):
    """Tokens (B, prefix + h*w, D) -> image (B, C, h*p, w*p): prefix tokens dropped, patch tokens on
    their grid, then log2(p) transposed convolutions (kernel 2, stride 2) with BatchNorm + ReLU between,
    widths D/3, D/12, ... (the official code's 768 -> 256 -> 64 -> 16 -> 3 for ViT-B/16)."""

    def __init__(self, dim: int, out_channels: int, grid: tuple[int, int], patch: int, prefix: int):
        super().__init__()
        self.grid, self.prefix = grid, prefix
        steps = int(round(math.log2(patch)))
        if 2**steps != patch:
            raise ValueError(f"a patch-embedding inverse upsamples by a power of two, not {patch}")
        widths = [dim] + [max(4, dim // (3 * 4**k)) for k in range(steps - 1)] + [out_channels]
        layers: list[nn.Module] = []
        for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.ConvTranspose2d(a, b, kernel_size=2, stride=2))
            if k < steps - 1:
                layers += [nn.BatchNorm2d(b), nn.ReLU()]
        self.net = nn.Sequential(*layers) if layers else nn.Conv2d(dim, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x[:, self.prefix:]
        return self.net(tokens.transpose(1, 2).reshape(x.shape[0], tokens.shape[-1], *self.grid))


class TokenInverse(nn.Module):
    """Tokens (B, T, D_in) -> (B, T, D_out), or a map (B, D_out, h, w) when ``grid`` is given."""

    def __init__(self, in_dim: int, out_dim: int, depth: int, heads: int, grid: tuple[int, int] | None = None):
        super().__init__()
        from timm.models.vision_transformer import Block

        self.blocks = nn.Sequential(*[Block(in_dim, num_heads=heads) for _ in range(depth)])
        self.out = nn.Linear(in_dim, out_dim)
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.out(self.blocks(x))
        return y if self.grid is None else y.transpose(1, 2).reshape(x.shape[0], -1, *self.grid)


class QueryInverse(nn.Module):
    """Decoded queries (B, Q, D_in) -> tokens (B, T, D_out): T blank learned queries cross-attend to them."""

    def __init__(self, in_dim: int, out_dim: int, out_tokens: int, depth: int, heads: int):
        super().__init__()
        self.blank = nn.Parameter(torch.randn(1, out_tokens, in_dim) * 0.02)
        layer = nn.TransformerDecoderLayer(in_dim, heads, dim_feedforward=2 * in_dim, batch_first=True,
                                           norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, depth)
        self.out = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.decoder(self.blank.expand(x.shape[0], -1, -1), x))


class MlpInverse(nn.Module):
    """(B, F) -> (B, *out_shape); with ``per_token``, (B, T, F) -> (B, T, *out_shape)."""

    def __init__(self, in_features: int, out_shape: Sequence[int], hidden: int, per_token: bool = False):
        super().__init__()
        self.out_shape, self.per_token = tuple(out_shape), per_token
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, math.prod(out_shape)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:2] if self.per_token else x.shape[:1]
        return self.net(x).view(*lead, *self.out_shape)


def square_layouts(n_tokens: int):
    """(prefix, side) for every way n_tokens = prefix + side^2 with up to 8 prefix tokens (class,
    register, distillation tokens come first), fewest prefix tokens first."""
    for prefix in range(min(9, n_tokens)):
        side = math.isqrt(n_tokens - prefix)
        if side * side == n_tokens - prefix:
            yield prefix, side


def _conv(prev, nxt, hidden, depth, heads) -> nn.Module:
    factor = prev[1] // nxt[1]
    if prev[1] != factor * nxt[1] or prev[2] != factor * nxt[2]:
        raise ValueError(f"cannot invert a CNN stage from {nxt} to {prev}: not one integer downsampling")
    return ConvInverse(nxt[0], prev[0], factor, hidden)


def _local(prev, nxt, hidden, depth, heads) -> nn.Module:
    factor = prev[1] // nxt[1]
    if len(nxt) != 3 or prev[1] != factor * nxt[1] or prev[2] != factor * nxt[2]:
        raise ValueError(f"a local inverse maps a map to one of an integer upsampling, not {nxt} to {prev}")
    return LocalInverse(nxt[0], prev[0], factor, hidden)


def _patch(prev, nxt, hidden, depth, heads) -> nn.Module:
    n_tokens, dim = nxt
    for prefix, side in square_layouts(n_tokens):
        if prev[1] % side == 0:
            return PatchInverse(dim, prev[0], (side, side), prev[1] // side, prefix)
    raise ValueError(f"cannot place {n_tokens} tokens on a square grid for an image of {prev}")


def _tokens(prev, nxt, hidden, depth, heads) -> nn.Module:
    if prev[0] != nxt[0]:
        raise ValueError(f"token stages keep the token count, got {nxt} -> {prev}")
    return TokenInverse(nxt[1], prev[1], depth, heads)


def _tokens_to_map(prev, nxt, hidden, depth, heads) -> nn.Module:
    if nxt[0] != prev[1] * prev[2]:
        raise ValueError(f"{nxt[0]} tokens do not fill a {prev[1]}x{prev[2]} map")
    return TokenInverse(nxt[1], prev[0], depth, heads, grid=(prev[1], prev[2]))


# Inverse kind (a stage's ``inverse``) -> builder(shape of x_{j-1}, shape of x_j, hidden, depth, heads).
INVERSE_KINDS: dict[str, Callable[..., nn.Module]] = {
    "conv": _conv,  # CNN stage: feature map -> feature map of an integer upsampling
    "patch": _patch,  # ViT patch embedding: tokens on a square grid -> image
    "tokens": _tokens,  # transformer blocks: tokens -> as many tokens
    "tokens_to_map": _tokens_to_map,  # DETR encoder: tokens -> the backbone's map
    "queries_to_tokens": lambda prev, nxt, hidden, depth, heads: QueryInverse(nxt[1], prev[1], prev[0], depth, heads),
    "mlp": lambda prev, nxt, hidden, depth, heads: MlpInverse(nxt[0], prev, hidden),  # head: logits -> features
    "per_token_mlp": lambda prev, nxt, hidden, depth, heads: MlpInverse(nxt[-1], prev[1:], hidden, per_token=True),
    "local": _local,  # the local inverse backbone: each map position to its own image patch
}


def inverse_for(kind: str, x_prev: torch.Tensor, x_next: torch.Tensor, hidden: int = 64, depth: int = 1,
                heads: int = 4) -> nn.Module:
    """The ``kind`` of inverse mapping representations shaped like ``x_next`` to ones like ``x_prev``
    (both with a batch dimension)."""
    if kind not in INVERSE_KINDS:
        raise ValueError(f"unknown inverse kind '{kind}' (one of {', '.join(INVERSE_KINDS)})")
    return INVERSE_KINDS[kind](tuple(x_prev.shape[1:]), tuple(x_next.shape[1:]), hidden, depth, heads)


def build_inverses(staged, representations: Sequence[torch.Tensor], **kw) -> nn.ModuleList:
    """Inverse j (index j-1) maps x_j to x_{j-1}, for every stage j = 1..n of ``staged``."""
    return nn.ModuleList(inverse_for(stage.inverse, a, b, **kw)
                         for stage, a, b in zip(staged.stages, representations[:-1], representations[1:]))


def classic_path(classic: nn.ModuleList, j: int) -> nn.ModuleList:
    """The full-path (classic) inverse from x_j of a bundle of them: its components j, ..., 1."""
    return cast(nn.ModuleList, classic[j - 1])


def chain(inverses: nn.ModuleList | Sequence[nn.Module], x: torch.Tensor, j: int) -> torch.Tensor:
    """Image-level reconstruction from x_j: inverses j, j-1, ..., 1 applied in turn."""
    for inverse in reversed(inverses[:j]):
        x = inverse(x)
    return x
