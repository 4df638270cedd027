"""The forward model of the modular analyses, from the ``modular`` params section.

``modular.backbone`` names either a timm model (a ViT is split into bb/enc/pred, a CNN of the
EfficientNet family into stem/``groups``/head/pred) with weights from the backbone registry, or
``detr:<hub id or directory>`` for transformers' DETR (``facebook/detr-resnet-50`` at paper scale).
Nothing is swapped in when weights are missing: :class:`WeightsError` says what to supply.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featinv.backbones.registry import WeightsError
from featinv.config import Modular, forward_family
from featinv.hub import offline
from featinv.modular.stages import StagedModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ForwardModel:
    """A staged model with its input normalisation; ``classifier``: its last stage is class logits."""

    name: str
    staged: StagedModel
    mean: torch.Tensor  # (1, 3, 1, 1)
    std: torch.Tensor
    image_size: tuple[int, int]
    classifier: bool
    restage: Callable[[nn.Module], StagedModel]  # the adapter that split the model into stages
    fit: str = "crop"  # how images reach image_size (modular.fit): central crop, or the whole image resized

    def copy(self) -> ForwardModel:
        """An independent copy (its own weights), staged the same way."""
        return replace(self, staged=self.restage(copy.deepcopy(self.staged.model)))

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB -> the model's input space."""
        return (pixels - self.mean) / self.std

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input space -> [0, 1] RGB (clamped)."""
        return (x * self.std + self.mean).clamp(0, 1)


def image_size(cfg: Modular) -> tuple[int, int]:
    size = cfg.image_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _stats(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)


def load_detr(source: str) -> nn.Module:
    """``DetrForObjectDetection`` from a hub id or local directory, never downloaded when offline
    (transformers v5 builds DETR's timm backbone without ImageNet weights, then loads the checkpoint's)."""
    from transformers import DetrForObjectDetection

    try:
        return DetrForObjectDetection.from_pretrained(source, local_files_only=offline() or Path(source).is_dir()).eval()
    except (OSError, ValueError) as exc:
        raise WeightsError(
            f"no DETR weights for '{source}' ({type(exc).__name__}: {str(exc)[:200]}). Supply them in one of two ways: "
            f"(1) on a machine with internet: python -c \"from transformers import DetrForObjectDetection; "
            f"DetrForObjectDetection.from_pretrained('{source}')\" and copy ~/.cache/huggingface to this machine; "
            f"(2) save the model to a directory and set modular.backbone to 'detr:<that directory>'"
        ) from None


def load_forward(cfg: Modular, weights: str | None = None, pretrained: bool = True) -> ForwardModel:
    """The forward model named by ``cfg.backbone`` (``pretrained=False``: random weights, for tests)."""
    name = cfg.backbone
    size = image_size(cfg)
    family = forward_family(name)
    if family == "detr":
        from featinv.modular.detr import detr_stages

        source = name.split(":", 1)[1]
        if pretrained:
            model = load_detr(source)
        else:
            from transformers import DetrConfig, DetrForObjectDetection

            model = DetrForObjectDetection(DetrConfig.from_pretrained(source)).eval()
        restage = lambda m: detr_stages(m, size)
        return ForwardModel(name, restage(model), _stats(IMAGENET_MEAN), _stats(IMAGENET_STD), size, False, restage,
                            cfg.fit)

    from featinv.backbones import create_backbone
    from featinv.modular.stages import cnn_stages, vit_stages

    kwargs: dict[str, Any] = {"img_size": size} if family == "vit" else {}
    backbone = create_backbone(name, weights=weights, pretrained=pretrained, **kwargs)
    model = backbone.model.eval()
    restage = vit_stages if kwargs else (lambda m: cnn_stages(m, cfg.groups))
    pre = backbone.preprocessing
    return ForwardModel(name, restage(model), _stats(pre.mean), _stats(pre.std), size, True, restage, cfg.fit)
