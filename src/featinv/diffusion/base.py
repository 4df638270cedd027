"""The frozen base diffusion model: UNet2DConditionModel, text encoder + tokenizer, noise schedule,
and a codec (AutoencoderKL, or pixel space for the embedded default).

Paper scale loads miniSD (``lambdalabs/miniSD-diffusers``, or a local directory in the same
diffusers layout). The embedded default is the same component types, created here from params and
trained by the pipeline on the demo train split (``featinv train-base``); it is saved in that same
layout, so one loader serves both.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from featinv.config import DiffusionBase
from featinv.diffusion.codec import PatchCodec, VaeCodec
from featinv.diffusion.text import char_tokenizer, encode_prompts, small_text_encoder
from featinv.hub import offline


class BaseModelError(FileNotFoundError):
    """The base diffusion model cannot be found; the message says what to supply."""


@dataclass
class BaseModel:
    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    codec: PatchCodec | VaeCodec
    resolution: int
    source: str

    def prompt_embeddings(self, prompt: str) -> torch.Tensor:
        """(2, 77, D): row 0 the prompt, row 1 the empty prompt (dropped / unconditional)."""
        return encode_prompts(self.tokenizer, self.text_encoder, [prompt, ""])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        grid = self.codec.grid(self.resolution)
        return (self.codec.channels(), grid, grid)

    def to(self, device) -> "BaseModel":
        self.unet.to(device)
        self.text_encoder.to(device)
        self.codec.to(device)
        return self

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(directory / "unet")
        self.text_encoder.save_pretrained(directory / "text_encoder")
        self.tokenizer.save_pretrained(directory / "tokenizer")
        self.noise_scheduler.save_pretrained(directory / "scheduler")
        self.codec.save(directory)
        (directory / "featinv_base.json").write_text(json.dumps({"resolution": self.resolution}) + "\n")


def _groups(channels: tuple[int, ...]) -> int:
    """GroupNorm groups: the largest count up to 32 that divides every width."""
    g = math.gcd(*channels)
    return max(d for d in range(1, min(32, g) + 1) if g % d == 0)


def create_demo_base(cfg: DiffusionBase) -> BaseModel:
    """A fresh embedded base model from the ``diffusion.base`` params (random init, seeded)."""
    codec = PatchCodec(cfg.patch)
    grid = codec.grid(cfg.resolution)
    tokenizer = char_tokenizer()
    text_encoder = small_text_encoder(len(tokenizer), cfg.text_hidden, cfg.text_layers, cfg.seed)
    torch.manual_seed(cfg.seed)
    channels = tuple(cfg.block_out_channels)
    n = len(channels)
    if any(c % cfg.attention_heads for c in channels[1:]):
        raise ValueError(f"diffusion.base.attention_heads={cfg.attention_heads} must divide every attention block's "
                         f"width {list(channels[1:])}")
    # diffusers' `attention_head_dim` is the number of heads (a historical misnomer).
    # Attention in every block but the first (highest resolution), as SD does at its coarser levels.
    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
    up = ("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
    unet = UNet2DConditionModel(
        sample_size=grid, in_channels=codec.channels(), out_channels=codec.channels(),
        layers_per_block=cfg.layers_per_block, block_out_channels=channels,
        down_block_types=down, up_block_types=up, cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.attention_heads, norm_num_groups=_groups(channels),
    )
    scheduler = ddpm_scheduler(cfg.beta_schedule, cfg.prediction_type)
    return BaseModel(unet, text_encoder, tokenizer, scheduler, codec, cfg.resolution, "trained:featinv")


def ddpm_scheduler(beta_schedule: str = "scaled_linear", prediction_type: str = "epsilon") -> DDPMScheduler:
    """Stable Diffusion's training noise schedule (1000 steps, betas 0.00085..0.012 where linear)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule, beta_start=0.00085, beta_end=0.012,
                         prediction_type=prediction_type, clip_sample=False)


def _resolve(source: str) -> Path:
    """A local directory for a base model given as a directory or a Hugging Face hub id."""
    path = Path(source)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    hint = (f"base diffusion model '{source}' is neither a local directory nor in the Hugging Face cache. "
            f"On a machine with internet run `hf download {source}` (then copy $HF_HOME over), "
            f"or download it and set diffusion.base.source to its local directory "
            f"(diffusers layout: unet/, vae/, text_encoder/, tokenizer/, scheduler/)")
    try:
        return Path(snapshot_download(source, local_files_only=True))
    except Exception:
        if offline():
            raise BaseModelError(hint) from None
    try:
        return Path(snapshot_download(source))
    except Exception as exc:
        raise BaseModelError(f"{hint} ({type(exc).__name__})") from None


def load_base(source: str | Path, resolution: int | None = None) -> BaseModel:
    """Load a base model saved by :meth:`BaseModel.save` or in the Stable Diffusion diffusers layout."""
    path = _resolve(str(source))
    for part in ("unet", "text_encoder", "tokenizer", "scheduler"):
        if not (path / part).is_dir():
            raise BaseModelError(f"base model at {path} has no {part}/ folder (diffusers layout expected)")
    # float32 compute whatever the stored precision (the shipped demo base stores float16).
    unet = UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=torch.float32).eval().requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", torch_dtype=torch.float32).eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    scheduler = DDPMScheduler.from_pretrained(path / "scheduler")
    codec: PatchCodec | VaeCodec
    if (path / "codec.json").exists():
        spec = json.loads((path / "codec.json").read_text())
        codec = PatchCodec(spec["patch"])
    else:
        from diffusers import AutoencoderKL

        codec = VaeCodec(AutoencoderKL.from_pretrained(path / "vae"))
    meta = path / "featinv_base.json"
    factor = codec.factor
    if resolution is None:
        if meta.exists():
            resolution = json.loads(meta.read_text())["resolution"]
        else:
            resolution = unet.config.sample_size * factor
    grid = codec.grid(int(resolution))
    if grid != unet.config.sample_size:
        raise BaseModelError(
            f"base model {source}: diffusion.base.resolution {resolution} px / {factor} px per latent = a {grid}^2 "
            f"latent grid, but its UNet was built for {unet.config.sample_size}^2 (sample_size): set "
            f"diffusion.base.resolution to {unet.config.sample_size * factor}")
    return BaseModel(unet, text_encoder, tokenizer, scheduler, codec, int(resolution), str(source))
