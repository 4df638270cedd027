"""The conditioning encoder (FeatInv, Sec. 2 "Conditional input encoder").

A (B, C, H_f, W_f) feature map is bilinearly upsampled to the diffusion model's internal grid
(H_d, W_d), then a shallow CNN maps it to the width of the UNet's first block:
conv3x3 C->hidden, SiLU, (conv3x3 hidden->hidden, SiLU) x (depth-1), zero-initialised conv3x3
hidden->out. The paper uses hidden=512, depth=2, out=320 (miniSD).

Pooled variant: the pooled (B, C) vector is copied over the whole grid and goes through the same
encoder (bilinear upsampling of a 1x1 map is exactly that copy).

The first layer can be computed two exact ways (``first_layer``): ``direct``, a 3x3 convolution over
the upsampled map, or ``factored``: bilinear upsampling is linear per channel and a 1x1 channel mix
commutes with it, so each of the nine taps is a 1x1 convolution at the map's own grid, upsampled,
shifted by its offset and summed. Factored costs 9·C·hidden per *map* position instead of per grid
position, plus the upsampling of 9·hidden channels: cheaper when C is wide and the map much coarser
than the grid (the demo: 5× on CPU), dearer where the 9·hidden upsampled channels dominate (the
paper's shape on CPU). Same weights, same outputs (to rounding), same gradients.

Control-path options (off in the paper's layout): ``levels`` L > 1 also injects the hint into the
ControlNet's down blocks 1..L-1 (each block's input plus a zero-initialised 1x1 convolution of the
hint average-pooled to that block's grid, held here as ``level_convs``; T2I-Adapter and Uni-ControlNet
feed several levels); ``zero_last: false`` initialises the last convolution small and random instead
of zero, leaving the ControlNet's own zero convolutions as the only zero layers.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def zero_module(module: nn.Module) -> nn.Module:
    """Zero-initialise, so the ControlNet starts as the unmodified base model."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


FIRST_LAYER = ("direct", "factored")


def upsampled_conv3x3(x: torch.Tensor, conv: nn.Conv2d, grid: int) -> torch.Tensor:
    """``conv(bilinear_upsample(x, grid))`` for a 3x3, padding-1 ``conv``, computed as nine 1x1
    convolutions at ``x``'s own grid, each upsampled, shifted by its tap's offset and summed."""
    b, c = x.shape[:2]
    h = conv.out_channels
    taps = conv.weight.permute(2, 3, 0, 1).reshape(9 * h, c, 1, 1)  # (ky, kx, out) stacked
    y = F.interpolate(F.conv2d(x, taps), size=(grid, grid), mode="bilinear", align_corners=False)
    y = F.pad(y, (1, 1, 1, 1)).view(b, 3, 3, h, grid + 2, grid + 2)
    out = sum(y[:, i, j, :, i : i + grid, j : j + grid] for i in range(3) for j in range(3))
    assert conv.bias is not None, "the factored first layer has a bias"
    return out + conv.bias.view(1, h, 1, 1)


class FeatureConditioningEncoder(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, in_channels: int, fmap_size: tuple[int, int], grid: int, hidden: int = 512,
                 depth: int = 2, out_channels: int = 320, pooled: bool = False, first_layer: str = "direct",
                 level_channels: tuple[int, ...] = (), zero_last: bool = True):
        super().__init__()
        if depth < 1:
            raise ValueError(f"encoder depth must be >= 1, got {depth}")
        if first_layer not in FIRST_LAYER:
            raise ValueError(f"encoder first_layer must be one of {', '.join(FIRST_LAYER)}, got {first_layer!r}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 3, padding=1), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU()]
        last = nn.Conv2d(hidden, out_channels, 3, padding=1)
        if zero_last:
            zero_module(last)
        else:
            nn.init.normal_(last.weight, std=1e-3)
            if last.bias is not None:
                nn.init.zeros_(last.bias)
        layers.append(last)
        self.net = nn.Sequential(*layers)
        # levels 1..L-1: the hint, pooled to each down block's grid, into that block's input channels
        self.level_convs = nn.ModuleList(zero_module(nn.Conv2d(out_channels, c, 1)) for c in level_channels)

    def check(self, cond: torch.Tensor) -> None:
        """Raise a clear error when ``cond`` is not what this encoder was trained on."""
        c = self.config.in_channels
        if self.config.pooled:
            if cond.ndim != 2 or cond.shape[1] != c:
                raise ValueError(
                    f"this pooled model takes (B, {c}) pooled feature vectors, got {tuple(cond.shape)}; "
                    f"pool a feature map with backbone.pooled(fmap) first"
                )
            return
        h, w = self.config.fmap_size
        if cond.ndim != 4 or cond.shape[1] != c:
            raise ValueError(f"feature map has shape {tuple(cond.shape)}, this model was trained on (B, {c}, {h}, {w}) maps")
        if tuple(cond.shape[2:]) != (h, w):
            raise ValueError(f"feature map grid {tuple(cond.shape[2:])} differs from the trained grid ({h}, {w})")

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        self.check(cond)
        if cond.ndim == 2:
            cond = cond[:, :, None, None]
        grid = self.config.grid
        cond = cond.to(self.dtype)
        if self.config.first_layer == "factored":
            return self.net[1:](upsampled_conv3x3(cond, cast(nn.Conv2d, self.net[0]), grid))
        x = F.interpolate(cond, size=(grid, grid), mode="bilinear", align_corners=False)
        return self.net(x)
