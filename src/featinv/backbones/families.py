"""Family adapters: how each timm architecture's native features map to a (B, C, H, W) grid and back.

- CNNs (ResNet, ConvNeXt, EfficientNet, ...): ``forward_features`` is already NCHW.
- Swin / SwinV2: ``forward_features`` is NHWC; channels are moved first.
- ViT-like: ``forward_features`` is (B, prefix + H*W, C); prefix (class/register) tokens are
  dropped and the patch tokens reshaped to the patch grid.

Each adapter also gives back the model's native layout (``to_native``) so that ``head`` is the
model's own ``forward_head`` applied to a possibly modified feature map, and ``pool`` is the
model's own global pooling.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# A timm classifier: an nn.Module whose parts (blocks, patch_embed, forward_features, forward_head,
# pretrained_cfg) torch's stubs type as ``Tensor | Module`` attributes: typed by what timm documents.
TimmModel = Any


class CnnFamily:
    name = "cnn"

    def __init__(self, model: TimmModel):
        self.model = model

    def to_spatial(self, native: torch.Tensor) -> torch.Tensor:
        return native

    def to_native(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap

    def _pool_module(self) -> nn.Module:
        head = getattr(self.model, "head", None)
        if head is not None and hasattr(head, "global_pool"):
            return head.global_pool
        return self.model.global_pool

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return self._pool_module()(self.to_native(fmap)).flatten(1)


class NhwcFamily(CnnFamily):
    name = "nhwc"

    def to_spatial(self, native: torch.Tensor) -> torch.Tensor:
        return native.permute(0, 3, 1, 2)

    def to_native(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap.permute(0, 2, 3, 1)


class TokenFamily(CnnFamily):
    name = "tokens"
    POOLS = ("avg", "avgmax", "max")

    def __init__(self, model: TimmModel):
        super().__init__(model)
        self.prefix = int(getattr(model, "num_prefix_tokens", 1))
        self.grid = tuple(model.patch_embed.grid_size)

    def to_spatial(self, native: torch.Tensor) -> torch.Tensor:
        tokens = native[:, self.prefix :]
        b, n, c = tokens.shape
        h, w = self.grid
        if n != h * w:
            raise ValueError(f"{n} patch tokens do not form the {h}x{w} patch grid")
        return tokens.transpose(1, 2).reshape(b, c, h, w)

    def _check_pool(self) -> str:
        pool = getattr(self.model, "global_pool", "token")
        if pool not in self.POOLS:
            raise ValueError(
                f"this ViT pools with '{pool}', which reads the class token that the spatial map excludes; "
                f"head()/pooled() need a model that pools over patch tokens (global_pool in {self.POOLS})"
            )
        return pool

    def to_native(self, fmap: torch.Tensor) -> torch.Tensor:
        self._check_pool()
        tokens = fmap.flatten(2).transpose(1, 2)
        # Patch-token pooling ignores the prefix: zeros stand in for it, so forward_head's slicing holds.
        prefix = tokens.new_zeros(tokens.shape[0], self.prefix, tokens.shape[2])
        return torch.cat([prefix, tokens], dim=1)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        pool = self._check_pool()
        tokens = fmap.flatten(2)
        if pool == "avg":
            return tokens.mean(-1)
        if pool == "max":
            return tokens.amax(-1)
        return 0.5 * (tokens.mean(-1) + tokens.amax(-1))


def _class_families() -> list[tuple[type, type]]:
    from timm.models import byobnet, convnext, efficientnet, regnet, resnet, swin_transformer
    from timm.models import swin_transformer_v2, vision_transformer

    pairs: list[tuple[type, type]] = [
        (resnet.ResNet, CnnFamily),
        (convnext.ConvNeXt, CnnFamily),
        (efficientnet.EfficientNet, CnnFamily),
        (regnet.RegNet, CnnFamily),
        (byobnet.ByobNet, CnnFamily),
        (swin_transformer.SwinTransformer, NhwcFamily),
        (swin_transformer_v2.SwinTransformerV2, NhwcFamily),
        (vision_transformer.VisionTransformer, TokenFamily),
    ]
    return pairs


def family_for(model: TimmModel) -> CnnFamily:
    """The adapter for a timm model, chosen by its class."""
    for cls, family in _class_families():
        if isinstance(model, cls):
            return family(model)
    raise ValueError(
        f"no feature-map adapter for {type(model).__name__}; supported: "
        + ", ".join(cls.__name__ for cls, _ in _class_families())
    )
