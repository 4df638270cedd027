"""Image <-> diffusion-space codecs.

- :class:`VaeCodec`: Stable Diffusion's AutoencoderKL (paper scale, miniSD): latents = mean of the
  posterior times the VAE's scaling factor.
- :class:`PatchCodec`: pixel space, folded into a coarser grid by space-to-depth (``patch`` x
  ``patch`` pixels become channels). Lossless and free, so the embedded base model needs no VAE of
  its own: a 64 px image becomes a 16 x 16 x 48 tensor that a small UNet can afford on a CPU.

Images are (B, 3, H, W) floats in [-1, 1].
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F


class PatchCodec:
    kind = "patch"

    def __init__(self, patch: int):
        self.patch = patch

    def channels(self) -> int:
        return 3 * self.patch * self.patch

    @property
    def factor(self) -> int:
        """Pixels per latent position along each side."""
        return self.patch

    def grid(self, resolution: int) -> int:
        return resolution // self.factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.patch)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents, self.patch).clamp(-1, 1)

    def to(self, device):
        return self

    def save(self, directory: Path) -> None:
        (directory / "codec.json").write_text(json.dumps({"kind": self.kind, "patch": self.patch}) + "\n")


class VaeCodec:
    kind = "vae"

    def __init__(self, vae):
        self.vae = vae.eval().requires_grad_(False)
        self.scale = float(vae.config.scaling_factor)

    def channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def factor(self) -> int:
        """Pixels per latent position along each side (8 for Stable Diffusion's VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def grid(self, resolution: int) -> int:
        return resolution // self.factor

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return dist.mean.float() * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode((latents / self.scale).to(self.vae.dtype)).sample.float().clamp(-1, 1)

    def to(self, device):
        self.vae.to(device)
        return self

    def save(self, directory: Path) -> None:
        self.vae.save_pretrained(directory / "vae")
