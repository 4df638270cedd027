"""FeatInv as one Python object, in diffusers' conventions: load a trained model directory, give it
images or feature maps, get images back.

    from featinv import FeatInvPipeline

    pipe = FeatInvPipeline.from_pretrained("data/models/demo/controlnet/tf_efficientnet_lite0-unpooled")
    out = pipe(images=[Image.open("cat.jpg")], seed=0)
    out.images[0]                                   # PIL reconstruction
    pipe.score(out.images, [Image.open("cat.jpg")])  # cosine per position, top-5/1 match

It runs the code ``featinv sample`` runs (:func:`featinv.diffusion.sample.initial_noise` and
:func:`~featinv.diffusion.sample.denoise`): for the same maps, keys, seed and settings the images
are the same, bit for bit on one machine.

Not a subclass of diffusers' ``DiffusionPipeline``: its loader and saver require every component to
be a diffusers or transformers class with its own ``from_pretrained``, and FeatInv's conditioning
encoder and the timm backbone are neither; the trained model directory keeps FeatInv's layout (a stock
``ControlNetModel`` under ``controlnet/``, the encoder, ``featinv.json``). The conventions kept:
``from_pretrained``, ``.to(device)``, a call returning an output whose ``.images`` are PIL images,
``num_inference_steps`` / ``guidance_scale`` / ``generator`` arguments and a mutable ``.scheduler``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import BaseOutput
from PIL import Image

from featinv.backbones import Backbone, create_backbone
from featinv.backbones.registry import image_items
from featinv.devices import resolve_device
from featinv.diffusion.base import BaseModel, load_base
from featinv.diffusion.controlnet import FeatureControlNet
from featinv.diffusion.sample import denoise, initial_noise, make_scheduler
from featinv.metrics.similarity import cosine_per_position, topk_match
from featinv.plots import to_uint8

# The embedded default's sampling section (params.yaml; a test keeps them equal). At paper scale
# pass the paper's: num_inference_steps=50 and timestep_spacing="leading".
class _Defaults(TypedDict):
    scheduler: str
    timestep_spacing: str
    num_inference_steps: int
    guidance_scale: float
    control_strength: float
    hint_guidance: float


DEFAULTS: _Defaults = {"scheduler": "ddim", "timestep_spacing": "trailing", "num_inference_steps": 10, "guidance_scale": 1.75,
            "control_strength": 1.0, "hint_guidance": 1.0}


@dataclass
class FeatInvPipelineOutput(BaseOutput):
    """``images``: the reconstructions, ``samples_per_map`` per map, map by map (PIL, RGB).
    ``feature_maps``: what they were conditioned on, (B, C, h, w), or (B, C) for a pooled model."""

    images: list[Image.Image]
    feature_maps: torch.Tensor


def resolve_relative(path: str, anchor: Path) -> str:
    """``path`` as given when it exists (or is not a local path, e.g. a hub id); otherwise relative
    to the nearest ancestor of ``anchor`` under which it exists (a model's meta names its base as the
    project saw it, e.g. ``models/demo-base``, relative to the project root)."""
    if Path(path).is_absolute() or Path(path).exists():
        return path
    for parent in Path(anchor).resolve().parents:
        if (parent / path).exists():
            return str(parent / path)
    return path


class FeatInvPipeline:
    """A trained FeatInv model with its frozen base diffusion model and its backbone."""

    def __init__(self, base: BaseModel, net: FeatureControlNet, prompt: str, device: torch.device,
                 weights: str | Path | None = None, scheduler: str = DEFAULTS["scheduler"],
                 timestep_spacing: str = DEFAULTS["timestep_spacing"]):
        self.base = base
        self.controlnet = net
        self.meta = dict(net.meta)
        self.prompt = prompt
        self.device = device
        self._weights = weights
        self._backbone: Backbone | None = None
        self.scheduler = make_scheduler(scheduler, base, timestep_spacing)
        self._text = base.prompt_embeddings(prompt).to(device)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, base: str | Path | None = None, device: str | None = None,
                        weights: str | Path | None = None, resolution: int | None = None,
                        scheduler: str = DEFAULTS["scheduler"],
                        timestep_spacing: str = DEFAULTS["timestep_spacing"]) -> "FeatInvPipeline":
        """Load ``model_dir`` (written by ``featinv train-controlnet``) with the base model its meta names
        (``base``: another directory or hub id), on ``device`` (default: CUDA if present, else CPU).
        ``weights``: a local weights file of the backbone where the registry cannot resolve them (the
        same clear :class:`~featinv.backbones.registry.WeightsError` as the pipeline's otherwise).
        ``scheduler`` / ``timestep_spacing``: the solver (``sampling.scheduler`` / ``.timestep_spacing``)."""
        net = FeatureControlNet.from_pretrained(model_dir)
        source = str(base) if base is not None else resolve_relative(str(net.meta["base_model"]), Path(model_dir))
        dev = resolve_device(device or "auto")
        base_model = load_base(source, resolution).to(dev)
        return cls(base_model, net.to(dev), str(net.meta.get("prompt", "")), dev, weights, scheduler, timestep_spacing)

    def to(self, device: str | torch.device) -> "FeatInvPipeline":
        self.device = torch.device(device)
        self.base.to(self.device)
        self.controlnet.to(self.device)
        self._text = self._text.to(self.device)
        if self._backbone is not None:
            self._backbone.to(self.device)
        return self

    @property
    def variant(self) -> str:
        return str(self.meta["variant"])

    @property
    def backbone(self) -> Backbone:
        """The backbone whose maps the model was trained on, at the input size they were computed at
        (built on first use: sampling from given maps does not need it)."""
        if self._backbone is None:
            size = self.meta.get("input_size")
            self._backbone = create_backbone(str(self.meta["backbone"]), weights=self._weights,
                                             input_size=int(size) if size else None).to(self.device)
        return self._backbone

    @property
    def view(self) -> str:
        """What the backbone saw of each training image (``features.view``)."""
        return str(self.meta.get("view", "eval_transform"))

    def features(self, images) -> torch.Tensor:
        """The backbone's maps of ``images`` as the model was trained on them: the spatial map
        (B, C, h, w), or its pooled vector (B, C) for a pooled model."""
        out = self.backbone.of_images(images, self.view)
        return out.pooled if self.variant == "pooled" else out.maps

    def __call__(self, images=None, feature_maps: torch.Tensor | np.ndarray | None = None,
                 num_inference_steps: int = DEFAULTS["num_inference_steps"],
                 guidance_scale: float = DEFAULTS["guidance_scale"],
                 control_strength: float = DEFAULTS["control_strength"],
                 hint_guidance: float = DEFAULTS["hint_guidance"], samples_per_map: int = 1,
                 generator: torch.Generator | list[torch.Generator] | None = None, seed: int = 0,
                 keys: Sequence[str] | None = None) -> FeatInvPipelineOutput:
        """Reconstruct ``images`` (through :meth:`features`) or given ``feature_maps``.

        Starting noise: from ``generator`` (one, or one per image) when given; otherwise sample s of
        map i starts from the noise of (``keys[i]``, s, ``seed``), as ``featinv sample`` draws it for
        a store's keys (default keys: "0", "1", ...), so equal keys and seed give equal images."""
        if (images is None) == (feature_maps is None):
            raise ValueError("give exactly one of images= or feature_maps=")
        for name, value in (("num_inference_steps", num_inference_steps), ("samples_per_map", samples_per_map)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        cond = self.features(images) if images is not None else torch.as_tensor(np.asarray(feature_maps)).float()
        expected = tuple(self.meta["fmap_shape"][:1]) if self.variant == "pooled" else tuple(self.meta["fmap_shape"])
        if tuple(cond.shape[1:]) != expected:
            raise ValueError(f"feature maps of shape {tuple(cond.shape[1:])} given to a {self.variant} model of "
                             f"{self.meta['backbone']}, which takes {expected}")
        finite = torch.isfinite(cond).flatten(1).all(1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten().tolist()
            raise ValueError(f"feature map(s) {bad[:10]}{' ...' if len(bad) > 10 else ''} hold NaN or inf values: "
                             "a reconstruction of them would be noise")
        n = len(cond)
        keys = [str(i) for i in range(n)] if keys is None else [str(k) for k in keys]
        if len(keys) != n:
            raise ValueError(f"{len(keys)} keys for {n} feature maps")
        cond = cond.repeat_interleave(samples_per_map, 0)
        shape = self.base.latent_shape
        if generator is None:
            noise = initial_noise([k for k in keys for _ in range(samples_per_map)],
                                  [s for _ in keys for s in range(samples_per_map)], seed, shape)
        else:
            gens = generator if isinstance(generator, list) else [generator] * len(cond)
            if len(gens) != len(cond):
                raise ValueError(f"{len(gens)} generators for {len(cond)} images")
            noise = torch.stack([torch.randn(shape, generator=g) for g in gens])
        images_out = denoise(self.base, self.controlnet, cond.to(self.device), noise.to(self.device), self._text,
                             self.scheduler, num_inference_steps, guidance_scale, control_strength,
                             hint_guidance=hint_guidance)
        pil = [Image.fromarray(a.transpose(1, 2, 0)) for a in to_uint8(images_out)]
        return FeatInvPipelineOutput(images=pil, feature_maps=cond[::samples_per_map].cpu())

    def score(self, reconstructions, originals, view: str = "eval_transform") -> dict[str, np.ndarray]:
        """Table 1's measures per reconstruction against its original (equal lengths), on the model's
        backbone: ``cosine_sim`` (cosine per spatial position, averaged), ``top5_match`` and
        ``top1_match`` (the original's top-1 class among the reconstruction's top 5 / top 1).
        ``view``: how the reconstructions are seen (``metrics.scoring``); originals as the model saw them."""
        recon, orig = image_items(reconstructions), image_items(originals)
        if len(recon) != len(orig):
            raise ValueError(f"{len(recon)} reconstructions for {len(orig)} originals")
        r, o = self.backbone.of_images(recon, view), self.backbone.of_images(orig, self.view)
        ref, top = o.topk[:, 0].numpy(), r.topk.numpy()
        return {"cosine_sim": cosine_per_position(o.maps, r.maps),
                "top5_match": topk_match(ref, top, 5), "top1_match": topk_match(ref, top, 1)}
