"""FeatInv's ControlNet: a diffusers ``ControlNetModel`` copied from the base UNet (trainable copy of
the encoder and mid block, zero convolutions on every residual it adds to the down blocks and the
mid block), fed by :class:`FeatureConditioningEncoder` instead of the stock image embedding.

Saved as ``controlnet/`` (``save_pretrained``: config.json + safetensors, so
``ControlNetModel.from_pretrained`` loads it), ``encoder/`` (same format) and ``featinv.json``
(backbone, layer, pooled or not, base model, params hash). Nothing is unpickled on load.

The stock conditioning embedding stays in the saved ControlNet at its smallest size (so the
checkpoint loads with plain ``ControlNetModel.from_pretrained``) but is bypassed: its output would be
added where the feature encoder's is added, after the first UNet convolution.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from torch import nn

from featinv.diffusion.encoder import FeatureConditioningEncoder

META = "featinv.json"


class FeatureControlNet(nn.Module):
    def __init__(self, controlnet: ControlNetModel, encoder: FeatureConditioningEncoder, meta: dict[str, Any]):
        super().__init__()
        self.controlnet = controlnet
        self.encoder = encoder
        self.meta = dict(meta)
        # Bypass the stock embedding; keep it for saving in the stock format.
        self._stock_embedding = [controlnet.controlnet_cond_embedding]
        controlnet.controlnet_cond_embedding = nn.Identity()

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, in_channels: int, fmap_size: tuple[int, int], hidden: int,
                  depth: int, pooled: bool, meta: dict[str, Any], first_layer: str = "direct", levels: int = 1,
                  zero_last: bool = True) -> "FeatureControlNet":
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16,), conditioning_channels=3)
        widths = [int(c) for c in unet.config.block_out_channels]
        if not 1 <= levels <= len(widths):
            raise ValueError(f"encoder levels must be between 1 and the UNet's {len(widths)} down blocks, got {levels}")
        encoder = FeatureConditioningEncoder(
            in_channels=in_channels, fmap_size=tuple(fmap_size), grid=int(unet.config.sample_size), hidden=hidden,
            depth=depth, out_channels=widths[0], pooled=pooled, first_layer=first_layer,
            level_channels=tuple(widths[:levels - 1]), zero_last=zero_last,  # block i's input: block i-1's width
        )
        return cls(controlnet, encoder, {**meta, "pooled": pooled})

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, cond: torch.Tensor | None = None,
                scale: float = 1.0, hint: torch.Tensor | None = None):
        """(down-block residuals, mid-block residual) to add to the frozen UNet. ``hint`` is
        ``encoder(cond)`` computed beforehand (the sampler encodes each map once, not every step)."""
        if hint is None:
            hint = self.encoder(cond)
        if not len(self.encoder.level_convs):
            return self.controlnet(noisy, timesteps, encoder_hidden_states=text, controlnet_cond=hint.to(noisy.dtype),
                                   conditioning_scale=scale, return_dict=False)
        # levels > 1: add the pooled, projected hint to the inputs of down blocks 1..L-1
        blocks = self.controlnet.down_blocks[1:1 + len(self.encoder.level_convs)]

        def hook(conv):
            def add(module, args, kwargs):
                states = kwargs["hidden_states"]
                extra = conv(nn.functional.adaptive_avg_pool2d(hint.to(states.dtype), states.shape[-2:]))
                return args, {**kwargs, "hidden_states": states + extra}
            return add

        handles = [block.register_forward_pre_hook(hook(conv), with_kwargs=True)
                   for conv, block in zip(self.encoder.level_convs, blocks)]
        try:
            return self.controlnet(noisy, timesteps, encoder_hidden_states=text, controlnet_cond=hint.to(noisy.dtype),
                                   conditioning_scale=scale, return_dict=False)
        finally:
            for handle in handles:
                handle.remove()

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        bypass = self.controlnet.controlnet_cond_embedding
        self.controlnet.controlnet_cond_embedding = self._stock_embedding[0]
        try:
            self.controlnet.save_pretrained(directory / "controlnet")
        finally:
            self.controlnet.controlnet_cond_embedding = bypass
        self.encoder.save_pretrained(directory / "encoder")
        (directory / META).write_text(json.dumps(self.meta, indent=1, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "FeatureControlNet":
        directory = Path(directory)
        if not (directory / META).exists():
            raise FileNotFoundError(f"{directory} is not a trained FeatInv ControlNet (no {META})")
        controlnet = ControlNetModel.from_pretrained(directory / "controlnet")
        encoder = FeatureConditioningEncoder.from_pretrained(directory / "encoder")
        meta = json.loads((directory / META).read_text())
        return cls(controlnet, encoder, meta).eval()
