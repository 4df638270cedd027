"""GPU figures (issue 26): one prepared, time-budgeted run, ``benchmarks/gpu.sh OUTDIR``.

Sections, each in its own process with a hard deadline (a section that overruns or crashes leaves
its error and whatever it measured before in the JSON; the next section still runs):

- ``sampling``: paper-shaped (miniSD-shaped UNet + FeatInv ControlNet, 256 px = 32x32 latents, VAE
  decode included, DDIM, guidance 1.75 with the hint in both branches) through featinv's batched
  sampler (``featinv.diffusion.sample.denoise``): variants screened at a few steps (autocast over
  fp32 weights, bf16 weights, channels-last, fused QKV, torch.compile), a batch ladder, the fastest
  measured at 50 steps; against diffusers' ``StableDiffusionControlNetPipeline`` loop driving the same
  components (``featinv.diffusion.bench.peer_pipeline``), one image per call.
- ``training``: paper-shaped ControlNet steps under ``augment: online`` (RandomResizedCrop 288 of
  JPEG shards, ConvNeXt-B and the VAE encoder on the GPU every step), bf16: a batch ladder of the
  GPU part on preloaded images, and the whole step through ``featinv.diffusion.online.OnlineViews``.
- ``extraction``: ResNet50 and ConvNeXt-B (288) maps into a zarr store from webdataset shards
  (``featinv.features.extract.extract``), with the decode-only loader and the GPU-only forward timed
  apart: which of the two bounds it.
- ``base``: the demo base (issue 27) trained by ``featinv.diffusion.recipes.train_base`` under
  ``config/demo-base-gpu.yaml``, two candidates at once, for the minutes left; each comes back as a
  tar of the float16 diffusers layout, its loss CSV and training summary.

Random weights throughout but for the demo base (the shapes, not the weights, set the cost).
Figures go to ``OUTDIR/gpu.json`` and ``OUTDIR/gpu.md``, rewritten after every section.
``--tiny`` runs every section on CPU with tiny models in seconds (the test suite does).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16 = 790e12  # H200 dense bf16 as measured here (8192^3 matmul, ~788 TFLOP/s); datasheet 989e12
DATASHEET_BF16 = {"H200": 989e12, "H100": 989e12}
PROMPT = "a high-quality, detailed, and professional image"

# Seconds per section on the device (each also stops at the global deadline).
BUDGET = {"sampling": 130, "training": 55, "extraction": 35}
SECTIONS = ("sampling", "training", "extraction", "base")

# Per-section figures every run writes (the CPU test checks them).
FIELDS = {
    "sampling": ["images_per_s", "batch_size", "variant", "steps", "guidance", "tflops", "fraction_of_peak",
                 "peak_gpu_mib", "images_per_s_diffusers_pipeline", "speedup_vs_diffusers_pipeline", "variants",
                 "flops_per_image"],
    "training": ["samples_per_s", "batch_size", "samples_per_s_gpu_only", "tflops", "fraction_of_peak", "peak_gpu_mib",
                 "ladder", "flops_per_sample"],
    "extraction": ["resnet50", "convnext_base"],
    "base": ["candidates"],
}
EXTRACT_FIELDS = ["images_per_s", "images_per_s_decode_only", "images_per_s_gpu_only", "bound", "tflops",
                  "fraction_of_peak", "peak_gpu_mib", "n_images"]
BASE_FIELDS = ["steps", "batch_size", "samples_per_s", "final_loss", "seconds", "file"]


def now() -> float:
    return time.monotonic()


def log(msg: str) -> None:
    print(f"[gpu-bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# shared helpers (run inside a section's process)


def _torch():
    import torch

    return torch


def device_of(tiny: bool):
    torch = _torch()
    return torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")


def sync(dev) -> None:
    if dev.type == "cuda":
        _torch().cuda.synchronize(dev)


def peak_mib(dev) -> float | None:
    torch = _torch()
    return torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None


def reset_peak(dev) -> None:
    torch = _torch()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def is_oom(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


def flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of ``fn`` (featinv.diffusion.bench's counter; imported late: torch)."""
    from featinv.diffusion.bench import flops as count

    return count(fn)


def build_on(dev, make: Callable[[], Any]):
    """Build a module's parameters straight on ``dev`` (random init of a miniSD-sized UNet on the
    CPU takes seconds), falling back to the CPU."""
    torch = _torch()
    if dev.type == "cuda":
        try:
            with torch.device(dev):
                return make()
        except Exception as exc:  # noqa: BLE001 - any failure: build on the CPU instead
            log(f"building on {dev} failed ({type(exc).__name__}: {exc}); building on the CPU")
    return make()


class Result:
    """A section's figures, written to its JSON file after every update (partial results survive a kill)."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {}

    def update(self, **kw) -> None:
        self.data.update(kw)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        tmp.replace(self.path)


# --------------------------------------------------------------------------------------------
# models

TINY_UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                 cross_attention_dim=32, attention_head_dim=2,
                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
TINY_VAE = dict(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1, sample_size=16)


def paper_models(dev, tiny: bool, fmap: tuple[int, int, int], hidden: int):
    """(BaseModel, FeatureControlNet): miniSD-shaped UNet, VAE and 77 x 768 text states (tiny: a few
    channels), random weights, the ControlNet copied from the UNet as FeatInv does."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from featinv.diffusion.base import BaseModel, ddpm_scheduler
    from featinv.diffusion.bench import SD_UNET, SD_VAE
    from featinv.diffusion.codec import VaeCodec
    from featinv.diffusion.controlnet import FeatureControlNet
    from featinv.diffusion.text import char_tokenizer, small_text_encoder

    torch = _torch()
    unet_cfg, vae_cfg = (TINY_UNET, TINY_VAE) if tiny else (SD_UNET, SD_VAE)
    width = unet_cfg["cross_attention_dim"]

    def make():
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**unet_cfg).eval().requires_grad_(False)
        vae = AutoencoderKL(**vae_cfg)
        tok = char_tokenizer()
        text = small_text_encoder(len(tok), width, 1, 0)
        res = unet_cfg["sample_size"] * 2 ** (len(vae_cfg["block_out_channels"]) - 1)
        base = BaseModel(unet, text, tok, ddpm_scheduler(), VaeCodec(vae), res, "bench:paper-shaped")
        net = FeatureControlNet.from_unet(unet, fmap[0], fmap[1:], hidden, 2, False,
                                          {"backbone": "bench", "variant": "unpooled"})
        return base, net

    base, net = build_on(dev, make)
    base.to(dev)
    net.to(dev)
    return base, net


def set_dtype(base, net, dtype, channels_last: bool) -> None:
    torch = _torch()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for m in (base.unet, net.controlnet, net.encoder, base.codec.vae):
        m.to(dtype=dtype)
        m.to(memory_format=fmt)


# --------------------------------------------------------------------------------------------
# section: sampling


def section_sampling(res: Result, tiny: bool, deadline: float) -> None:
    torch = _torch()
    from featinv.diffusion.bench import peer_pipeline, step_flops
    from featinv.diffusion.sample import MIN_ROWS, denoise, make_scheduler

    dev = device_of(tiny)
    fmap, hidden = ((16, 3, 3), 32) if tiny else ((2048, 7, 7), 512)
    screen_steps, steps = (2, 3) if tiny else (10, 50)
    screen_batch = 2 if tiny else 64
    ladder = [2, 4] if tiny else [32, 64, 128]  # 128 images = 256 rows per UNet call: the GPU is full
    base, net = paper_models(dev, tiny, fmap, hidden)
    text = base.prompt_embeddings(PROMPT).to(dev)
    latent = base.latent_shape
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    res.update(device=str(dev), steps=steps, guidance=1.75, resolution=base.resolution, latent_shape=list(latent),
               fmap_shape=list(fmap), variants=[], peak_bf16_flops=PEAK_BF16)

    def run(n: int, n_steps: int, generator_seed: int = 0):
        g = torch.Generator().manual_seed(generator_seed)
        noise = torch.randn(n, *latent, generator=g).to(dev)
        cond = torch.randn(n, *fmap, generator=g).to(dev)
        with torch.autocast(**amp):
            return denoise(base, net, cond, noise, text, make_scheduler("ddim", base), n_steps, 1.75, 1.0,
                           min_rows=MIN_ROWS)

    def timed(n: int, n_steps: int) -> float:
        """Images per second of one call of ``n`` images, after a warm-up call of the same shape."""
        run(n, min(n_steps, 2))
        sync(dev)
        t0 = now()
        run(n, n_steps)
        sync(dev)
        return n / (now() - t0)

    # FLOPs of one image: 2 branches x steps x (UNet + ControlNet) + hint encoder + VAE decode.
    per_call, per_hint = step_flops(base, net, text, fmap, latent, dev)
    with torch.no_grad():
        per_decode = flops(lambda: base.codec.decode(torch.randn(1, *latent, device=dev)))

    def per_image(n_steps: int) -> float:
        return per_call * 2 * n_steps + per_hint + per_decode

    res.update(flops_per_image=per_image(steps), unet_controlnet_flops_per_row=per_call)

    # Variants, cumulative: each kept if it measures faster than the best so far.
    variants: list[dict[str, Any]] = []
    best = {"name": None, "ips": 0.0}
    state = {"dtype": torch.float32, "channels_last": False, "fused_qkv": False, "compiled": False}

    def try_variant(name: str, apply: Callable[[], None], undo: Callable[[], None] | None, budget_needed: float):
        if now() + budget_needed > deadline:
            variants.append({"name": name, "skipped": "no time left"})
            res.update(variants=variants)
            return
        t0 = now()
        try:
            apply()
            ips = timed(screen_batch, screen_steps)
            entry = {"name": name, "images_per_s_screen": ips, "screen_steps": screen_steps,
                     "screen_batch": screen_batch, "seconds": now() - t0}
            if ips > best["ips"]:
                best.update(name=name, ips=ips)
                entry["kept"] = True
            else:
                entry["kept"] = False
                if undo:
                    undo()
        except Exception as exc:  # noqa: BLE001
            entry = {"name": name, "error": f"{type(exc).__name__}: {str(exc)[:300]}", "seconds": now() - t0}
            log(f"sampling variant {name} failed: {entry['error']}")
            if undo:
                with contextlib.suppress(Exception):
                    undo()
        variants.append(entry)
        log(f"sampling variant {entry}")
        res.update(variants=variants)

    def to_bf16():
        set_dtype(base, net, torch.bfloat16, state["channels_last"])
        state["dtype"] = torch.bfloat16

    def to_fp32():
        set_dtype(base, net, torch.float32, state["channels_last"])
        state["dtype"] = torch.float32

    def to_cl():
        set_dtype(base, net, state["dtype"], True)
        state["channels_last"] = True

    def from_cl():
        set_dtype(base, net, state["dtype"], False)
        state["channels_last"] = False

    def fuse():
        base.unet.fuse_qkv_projections()
        net.controlnet.fuse_qkv_projections()
        state["fused_qkv"] = True

    def unfuse():
        base.unet.unfuse_qkv_projections()
        net.controlnet.unfuse_qkv_projections()
        state["fused_qkv"] = False

    originals = {}

    def compile_models():
        originals["unet"], originals["controlnet"] = base.unet.forward, net.controlnet.forward
        # CPU (tiny): dynamo's tracing with the eager backend (inductor's C++ build takes minutes on 2 cores)
        kw = {"backend": "eager"} if dev.type == "cpu" else {}
        base.unet.forward = torch.compile(base.unet.forward, dynamic=False, **kw)
        net.controlnet.forward = torch.compile(net.controlnet.forward, dynamic=False, **kw)
        state["compiled"] = True

    def uncompile():
        if originals:
            base.unet.forward, net.controlnet.forward = originals["unet"], originals["controlnet"]
        state["compiled"] = False

    # The SDPA attention processor is diffusers' default on torch 2 (AttnProcessor2_0): recorded.
    res.update(attention_processor=type(next(iter(base.unet.attn_processors.values()))).__name__)
    try_variant("autocast-bf16 over fp32 weights (featinv today)", lambda: None, None, 5)
    try_variant("bf16 weights", to_bf16, to_fp32, 5)
    try_variant("+ channels_last", to_cl, from_cl, 5)
    try_variant("+ fused QKV", fuse, unfuse, 5)
    res.update(variant=best["name"], state={k: str(v) for k, v in state.items()})

    # Batch ladder on the kept eager variant.
    ladder_out = []
    best_batch, best_ips = screen_batch, best["ips"]
    for b in ladder:
        if b == screen_batch:
            ladder_out.append({"batch": b, "images_per_s_screen": best["ips"]})
            continue
        if now() + 10 + 0.5 * b / max(best_ips, 1e-9) > deadline:
            ladder_out.append({"batch": b, "skipped": "no time left"})
            continue
        try:
            reset_peak(dev)
            ips = timed(b, screen_steps)
            ladder_out.append({"batch": b, "images_per_s_screen": ips, "peak_gpu_mib": peak_mib(dev)})
            if ips > best_ips * 1.02:
                best_batch, best_ips = b, ips
        except Exception as exc:  # noqa: BLE001
            ladder_out.append({"batch": b, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            if not is_oom(exc):
                raise
            break
        finally:
            log(f"sampling ladder {ladder_out[-1]}")
            res.update(batch_ladder=ladder_out)

    # The figure: the kept variant at its best batch, the full step count.
    def headline(label: str) -> float:
        reset_peak(dev)
        ips = timed(best_batch, steps)
        achieved = per_image(steps) * ips
        res.update(images_per_s=ips, batch_size=best_batch, tflops=achieved / 1e12,
                   fraction_of_peak=achieved / PEAK_BF16 if dev.type == "cuda" else None,
                   peak_gpu_mib=peak_mib(dev), variant=label)
        log(f"sampling [{label}]: {ips:.3f} images/s at batch {best_batch} ({achieved / 1e12:.1f} TFLOP/s)")
        return ips

    eager_ips = headline(best["name"])
    res.update(images_per_s_eager=eager_ips)

    # diffusers' loop over the same components in the same state (weights, layout, attention), one image
    # per call, as a user of the stock pipeline samples; the hint encoded per call.
    pipe = peer_pipeline(base, net)
    n_peer = 1 if tiny else 3

    def peer():
        with torch.no_grad(), torch.autocast(**amp):
            h = net.encoder(torch.randn(1, *fmap, device=dev))
            latents = pipe(prompt_embeds=text[0:1], negative_prompt_embeds=text[1:2], image=h,
                           num_inference_steps=steps, guidance_scale=1.75, controlnet_conditioning_scale=1.0,
                           latents=torch.randn(1, *latent, device=dev), output_type="latent").images
            base.codec.decode(latents)

    stock = None
    try:
        peer()
        sync(dev)
        t0 = now()
        for _ in range(n_peer):
            peer()
        sync(dev)
        stock = n_peer / (now() - t0)
        res.update(images_per_s_diffusers_pipeline=stock, speedup_vs_diffusers_pipeline=eager_ips / stock,
                   diffusers_pipeline_setting=f"same modules and state ({best['name']}), eager, one image per call")
        log(f"sampling: diffusers pipeline {stock:.3f} images/s, ratio {eager_ips / stock:.1f}")
    except Exception as exc:  # noqa: BLE001 - the compile variant still runs
        res.update(diffusers_pipeline_error=f"{type(exc).__name__}: {str(exc)[:300]}")
        log(f"diffusers pipeline failed: {traceback.format_exc()}")

    # Last (a kill at the deadline loses only this): torch.compile of UNet and ControlNet at the best batch.
    compile_budget = 0 if tiny else 45
    if now() + compile_budget > deadline:
        variants.append({"name": "+ torch.compile", "skipped": "no time left"})
        res.update(variants=variants)
        return
    t0 = now()
    # marked first: a kill at the deadline while compiling leaves this entry
    res.update(variants=variants + [{"name": "+ torch.compile", "started": True,
                                     "seconds_left_at_start": deadline - now()}])
    try:
        compile_models()
        run(best_batch, 1)  # compiles
        compile_s = now() - t0
        ips_c = timed(best_batch, screen_steps)
        screen_eager = best_ips
        entry = {"name": "+ torch.compile" + ("" if tiny else " (inductor default mode)"),
                 "images_per_s_screen": ips_c, "screen_batch": best_batch, "compile_s": compile_s,
                 "kept": ips_c > screen_eager}
        variants.append(entry)
        res.update(variants=variants)
        log(f"sampling variant {entry}")
        if ips_c > screen_eager and now() + 1.5 * steps / screen_steps * best_batch / ips_c < deadline:
            ips = headline(best["name"] + " + torch.compile")
            res.update(images_per_s_compiled=ips)
            if stock:
                res.update(speedup_vs_diffusers_pipeline=ips / stock)
    except Exception as exc:  # noqa: BLE001
        variants.append({"name": "+ torch.compile", "error": f"{type(exc).__name__}: {str(exc)[:300]}",
                         "seconds": now() - t0})
        res.update(variants=variants)
        log(f"torch.compile failed: {traceback.format_exc()}")


# --------------------------------------------------------------------------------------------
# synthetic JPEG shards


def jpeg_bytes(n_unique: int, side: int, seed: int = 0) -> list[bytes]:
    """``n_unique`` random-ish photographs' worth of JPEG: smooth colour fields plus fine noise, q90."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_unique):
        low = rng.uniform(0, 255, (6, 6, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(low).resize((side, side), Image.Resampling.BICUBIC), dtype=np.float32)
        img = np.clip(img + rng.normal(0, 18, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def write_jpeg_shards(out: Path, n: int, n_unique: int, side: int, maxcount: int = 1024) -> Path:
    """Webdataset shards of ``n`` JPEGs (``train`` split) with a manifest, as build-shards writes them."""
    from featinv.data.shards import ShardSink
    from featinv.fileio import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    blobs = jpeg_bytes(n_unique, side)
    sink = ShardSink(out, "train", maxcount)
    for i in range(n):
        sink.write({"__key__": f"img{i:07d}", "jpg": blobs[i % n_unique], "cls": str(i % 10).encode(),
                    "json": b"{}"})
    shards = sink.close()
    manifest = {"dataset": "bench-jpeg", "source": "synthetic", "label_space": "bench",
                "classes": [f"c{i}" for i in range(10)], "imagenet_classes": None, "per_class": {"train": None},
                "rejected": 0, "splits": {"train": {"count": n, "shards": shards}}}
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return out


# --------------------------------------------------------------------------------------------
# section: training


def section_training(res: Result, tiny: bool, deadline: float, work: Path) -> None:
    torch = _torch()
    import numpy as np

    from featinv.backbones import create_backbone
    from featinv.config import section
    from featinv.data.shards import index_split
    from featinv.diffusion.online import OnlineViews
    from featinv.diffusion.train import diffusion_loss

    dev = device_of(tiny)
    size = 32 if tiny else 288
    backbone = create_backbone("convnext_atto" if tiny else "convnext_base", pretrained=False, input_size=size)
    fmap = tuple(backbone.fmap_shape)
    base, net = paper_models(dev, tiny, fmap, 32 if tiny else 512)
    backbone.to(dev)
    ladder = [2, 4] if tiny else [32, 64, 128, 256]
    n_timed = 1 if tiny else 3
    shards = write_jpeg_shards(work / "train-shards", 64 if tiny else 1024, 8 if tiny else 64, 64 if tiny else 320)
    augment = section("controlnet.train.augment", {"mode": "online", "size": size, "scale": [0.08, 1.0],
                                                   "ratio": [0.75, 1.3333333], "hflip": True, "vflip": True})
    views = OnlineViews(index_split(shards, "train", views=False), backbone, base.codec, base.resolution, "unpooled",
                        augment, 0).to(dev)
    text = base.prompt_embeddings(PROMPT).to(dev)
    sched = base.noise_scheduler
    sched.alphas_cumprod = sched.alphas_cumprod.to(dev)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    res.update(device=str(dev), resolution=base.resolution, augment="online RandomResizedCrop",
               crop_size=size, backbone=backbone.name, fmap_shape=list(fmap), precision="bf16 autocast, fp32 master")

    to_backbone = views.to_backbone
    from featinv.data.target_view import TargetView

    to_target = TargetView(base.resolution)

    def gpu_part(x_backbone, x_target):
        """The step's GPU work from decoded images: backbone map, VAE latents, ControlNet forward/backward."""
        n = x_backbone.shape[0]
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            cond = backbone.spatial(x_backbone).float()
            latents = base.codec.encode(x_target)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            noise = torch.randn_like(latents)
            t = torch.randint(0, 1000, (n,), device=dev)
            loss = diffusion_loss(base.unet, sched, latents, text[0:1].expand(n, -1, -1), noise, t,
                                  residuals=lambda x, tt, tx: net(x, tt, tx, cond))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    # One decoded batch of views, reused: the GPU part alone.
    from featinv.data.shards import read_image
    from featinv.diffusion.online import online_view

    def decoded(n: int):
        vs = [online_view(read_image(views.index[i % views.n]), augment, 0, 0, i) for i in range(n)]
        return (torch.stack([to_backbone(v) for v in vs]).to(dev), torch.stack([to_target(v) for v in vs]).to(dev))

    ladder_out, best = [], None
    for b in ladder:
        if now() + 15 > deadline:
            ladder_out.append({"batch": b, "skipped": "no time left"})
            continue
        try:
            reset_peak(dev)
            xb, xt = decoded(b)
            gpu_part(xb, xt)
            sync(dev)
            t0 = now()
            for _ in range(n_timed):
                gpu_part(xb, xt)
            sync(dev)
            sps = n_timed * b / (now() - t0)
            ladder_out.append({"batch": b, "samples_per_s_gpu_only": sps, "peak_gpu_mib": peak_mib(dev)})
            best = (b, sps)  # the largest batch that fits
        except Exception as exc:  # noqa: BLE001
            ladder_out.append({"batch": b, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
            opt.zero_grad(set_to_none=True)
            if best is None and not is_oom(exc):
                raise
            break
        finally:
            log(f"training ladder {ladder_out[-1]}")
            res.update(ladder=ladder_out)
    if best is None:
        raise RuntimeError("no training batch fitted")
    b = best[0]
    # FLOPs of one sample's step: backbone + VAE encoder forward, UNet + ControlNet forward and backward (~3x).
    xb, xt = decoded(b)
    with torch.no_grad():
        f_frozen = flops(lambda: (backbone.spatial(xb[:1]), base.codec.encode(xt[:1])))
    lat1 = base.codec.encode(xt[:1])
    cond1 = backbone.spatial(xb[:1]).float().detach()
    f_unet = flops(lambda: diffusion_loss(base.unet, sched, lat1, text[0:1], lat1, torch.tensor([500], device=dev),
                                          residuals=lambda x, tt, tx: net(x, tt, tx, cond1)).backward())
    opt.zero_grad(set_to_none=True)
    per_sample = f_frozen + f_unet
    res.update(flops_per_sample=per_sample, batch_size=b, samples_per_s_gpu_only=best[1])

    # The whole step as training runs it: OnlineViews decodes, crops and encodes on every step.
    reset_peak(dev)
    rows = np.arange(b) % views.n

    def full_step(step: int):
        batch = views.get(rows, step)
        n = batch["latents"].shape[0]
        lat = batch["latents"].to(dev)
        cond = batch["cond"].to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = diffusion_loss(base.unet, sched, lat, text[0:1].expand(n, -1, -1), torch.randn_like(lat),
                                  torch.randint(0, 1000, (n,), device=dev),
                                  residuals=lambda x, tt, tx: net(x, tt, tx, cond))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    full_step(0)
    sync(dev)
    t0 = now()
    n_full = 1 if tiny else 2
    for s in range(n_full):
        full_step(s + 1)
    sync(dev)
    sps_full = n_full * b / (now() - t0)
    # and the CPU part of a step alone (decode, crop, resize, to tensors)
    t0 = now()
    for i in range(min(b, 64)):
        v = online_view(read_image(views.index[i % views.n]), augment, 0, 99, i)
        to_backbone(v), to_target(v)
    cpu_per_image = (now() - t0) / min(b, 64)
    achieved = per_sample * sps_full
    res.update(samples_per_s=sps_full, tflops=achieved / 1e12,
               fraction_of_peak=achieved / PEAK_BF16 if dev.type == "cuda" else None,
               tflops_gpu_only=per_sample * best[1] / 1e12,
               fraction_of_peak_gpu_only=per_sample * best[1] / PEAK_BF16 if dev.type == "cuda" else None,
               peak_gpu_mib=peak_mib(dev), cpu_seconds_per_view_one_process=cpu_per_image,
               bound="CPU view decode/crop (OnlineViews runs in the training process)"
               if sps_full < 0.8 * best[1] else "GPU")
    log(f"training: {sps_full:.1f} samples/s whole step, {best[1]:.1f} GPU part, batch {b}")


# --------------------------------------------------------------------------------------------
# section: extraction


def section_extraction(res: Result, tiny: bool, deadline: float, work: Path) -> None:
    torch = _torch()
    from featinv.backbones import create_backbone
    from featinv.data.batches import shard_batches
    from featinv.data.shards import index_split, read_image
    from featinv.features.extract import extract

    dev = device_of(tiny)
    n = 32 if tiny else 4096
    workers = 0 if tiny else max(1, min(14, (os.cpu_count() or 2) - 2))
    batch = 8 if tiny else 128
    shards = write_jpeg_shards(work / "extract-shards", n, 8 if tiny else 64, 64 if tiny else 320)
    index = index_split(shards, "train")
    res.update(device=str(dev), num_workers=workers, cpu_count=os.cpu_count(), batch_size=batch,
               jpeg_side=64 if tiny else 320)
    models = [("resnet50", "resnet18", None), ("convnext_base", "convnext_atto", 288)]
    for key, tiny_name, size in models:
        if now() + 10 > deadline:
            res.update(**{key: {"skipped": "no time left"}})
            continue
        try:
            backbone = create_backbone(tiny_name if tiny else key, pretrained=False,
                                       input_size=32 if tiny else size).to(dev)
            fig: dict[str, Any] = {"backbone": backbone.name, "input_size": backbone.preprocessing.input_size[1],
                                   "fmap_shape": list(backbone.fmap_shape), "n_images": n}
            transform = backbone.preprocessing.transform("eval_transform")
            batches = [list(range(i, min(n, i + batch))) for i in range(0, n, batch)]
            # decode + preprocess only (the DataLoader workers' part)
            t0 = now()
            for _images, _rows in shard_batches(index, transform, batches, workers, torch.device("cpu"), "decode",
                                                progress=False):
                pass
            fig["images_per_s_decode_only"] = n / (now() - t0)
            # GPU only: the same forward extract runs (map, head, top-k) on one preloaded batch
            x = torch.stack([transform(read_image(index[i])) for i in range(batch)]).to(dev)

            def forward():
                with torch.inference_mode():
                    fmap = backbone.spatial(x)
                    backbone.head(fmap).float().softmax(-1).topk(5, dim=-1)
                    backbone.pooled(fmap)

            forward()
            sync(dev)
            reps = max(1, min(20, n // batch))
            t0 = now()
            for _ in range(reps):
                forward()
            sync(dev)
            fig["images_per_s_gpu_only"] = reps * batch / (now() - t0)
            with torch.inference_mode():
                per_image = flops(lambda: backbone.head(backbone.spatial(x[:1])))
            fig["flops_per_image"] = per_image
            # the project's extraction into zarr, end to end
            reset_peak(dev)
            with tempfile.TemporaryDirectory(dir=work) as tmp:
                summary = extract(backbone, shards, "train", Path(tmp) / "f.zarr", batch_size=batch,
                                  num_workers=workers, device=str(dev), progress=False)
            ips = summary["images_per_second"]
            fig.update(images_per_s=ips, tflops=per_image * ips / 1e12,
                       fraction_of_peak=per_image * ips / PEAK_BF16 if dev.type == "cuda" else None,
                       precision="fp32 (extract's own: no autocast; TF32 convolutions where cuDNN allows)",
                       peak_gpu_mib=peak_mib(dev),
                       bound="JPEG decode" if fig["images_per_s_decode_only"] < fig["images_per_s_gpu_only"] else "GPU")
            res.update(**{key: fig})
            log(f"extraction {key}: {fig}")
            del backbone, x
        except Exception as exc:  # noqa: BLE001
            res.update(**{key: {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}})
            log(f"extraction {key} failed: {traceback.format_exc()}")


# --------------------------------------------------------------------------------------------
# section: the demo base (issue 27)

CANDIDATES = {
    # today's shape (its CPU cost bounds the ControlNets), the GPU overlay: v objective, wider views
    "a": {},
    # a wider first block (1.8x the UNet forward of "a" on one CPU thread at batch 16, measured 2026-12-05):
    # the CPU v base left noise at every step count, a capacity limit at the 48-channel patch grid
    # (docs/demo-results.md, "The base model's ceiling"); same data and objective
    "b": {"diffusion": {"base": {"block_out_channels": [128, 128, 192]}}},
}
OVERLAYS = ("params.yaml", "config/demo-base.yaml", "config/demo-base-gpu.yaml")


def base_config(candidate: str, tiny: bool, steps: int | None = None, warmup: int | None = None,
                checkpoint_every: int | None = None):
    from featinv import config

    cfg = config.load(*(ROOT / p for p in OVERLAYS))
    cfg = config.deep_merge(cfg, {"diffusion": {"base": {"source": "train"}}})
    cfg = config.deep_merge(cfg, CANDIDATES[candidate])
    train: dict[str, Any] = {}
    if tiny:
        train.update(batch_size=2, steps=2, lr_warmup_steps=1, checkpoint_every=1, mixed_precision="fp32")
    if steps is not None:
        train["steps"] = steps
    if warmup is not None:
        train["lr_warmup_steps"] = warmup
    if checkpoint_every is not None:
        train["checkpoint_every"] = checkpoint_every
    cfg = config.deep_merge(cfg, {"diffusion": {"base": {"train": train}}})
    config.validate(cfg)
    return cfg


def prepare_base_shards(out: Path) -> int:
    """The demo-base-gpu train split's shards (the demo photographs, which ship in wheels the device
    lacks): built here, carried there, where its targets are encoded."""
    from featinv import config
    from featinv.data.shards import build
    from featinv.data.sources import make_source

    d = config.typed(base_config("a", False)).data
    manifest = build(make_source(d), out, d.dataset, ["train"], d.per_class, d.shard_maxcount, d.views)
    log(f"{out}: {manifest['splits']['train']['count']} images")
    return 0


def prepare_base_targets(tiny: bool, work: Path, shards_dir: Path | None) -> Path:
    """The cached targets of the demo-base-gpu train split, encoded from the carried shards (tiny:
    from synthetic JPEG shards)."""
    from featinv import config
    from featinv.diffusion.targets import encode_targets, target_codec

    cfg = config.typed(base_config("a", tiny))
    out = work / "base-targets" / "train.zarr"
    if tiny or shards_dir is None:
        shards_dir = write_jpeg_shards(work / "base-shards", 16, 4, 96)
    codec, name = target_codec(cfg.diffusion)
    encode_targets(codec, name, shards_dir, "train", out, cfg.diffusion.base.resolution, batch_size=256,
                   num_workers=0 if tiny else 8, device="cpu", progress=False)
    return out


def train_candidate(res: Result, candidate: str, tiny: bool, deadline: float, targets: Path, work: Path) -> None:
    """Measure the step rate with a short run of train_base, then train as many steps as the time left allows
    (the cosine schedule then ends at the deadline), under the project's own train_base (checkpoints, loss log)."""
    from featinv import config
    from featinv.diffusion.recipes import train_base
    from featinv.provenance import params_hash

    out_root = work / f"base-{candidate}"
    calib = 1 if tiny else 150
    cfg = config.typed(base_config(candidate, tiny, steps=calib, checkpoint_every=10**6, warmup=1))
    b = cfg.diffusion.base
    res.update(candidate=candidate, overrides=CANDIDATES[candidate], batch_size=b.train.batch_size,
               block_out_channels=list(b.block_out_channels), prediction_type=b.prediction_type)
    t0 = now()
    s = train_base(b, cfg.diffusion.prompt, targets, out_root / "calib", out_root / "calib-loss.csv", "benchmark", device="auto",
                   progress=False)
    step_s = b.train.batch_size / s["samples_per_second"]
    res.update(calibration={"steps": calib, "samples_per_s": s["samples_per_second"], "wall_s": now() - t0})
    left = deadline - now() - (5 if tiny else 25)  # saving, packing
    steps = max(calib, int(left / step_s * 0.85)) if not tiny else 2
    default_warmup = base_config(candidate, False)["diffusion"]["base"]["train"]["lr_warmup_steps"]
    cfg = config.typed(base_config(candidate, tiny, steps=steps, warmup=min(default_warmup, max(1, steps // 10)),
                                   checkpoint_every=max(1, steps // 4)))
    b = cfg.diffusion.base
    res.update(steps_planned=steps, lr_warmup_steps=b.train.lr_warmup_steps)
    log(f"base {candidate}: {s['samples_per_second']:.0f} samples/s in calibration; training {steps} steps")
    model, loss_csv = out_root / "base", out_root / "base-loss.csv"
    s = train_base(b, cfg.diffusion.prompt, targets, model, loss_csv, params_hash({"diffusion": cfg.diffusion}), device="auto",
                   progress=False)
    res.update(steps=s["steps"], samples_per_s=s["samples_per_second"], final_loss=s["final_loss"],
               seconds=s["seconds"], complete=True)
    res.update(packed=str(pack_base(candidate, model, loss_csv, base_config(candidate, tiny, steps=steps), work)))


def pack_base(candidate: str, model: Path, loss_csv: Path, cfg_dict: dict, work: Path) -> Path:
    """A tar of the model in float16 (the layout export-base ships), its loss CSV, training summary and params."""
    import yaml

    from featinv.diffusion.export import export_base

    half = work / f"base-{candidate}-fp16"
    export_base(model, half)
    if (model / "training.json").exists():
        (half / "training.json").write_text((model / "training.json").read_text())
    (half / "base-loss.csv").write_text(loss_csv.read_text() if loss_csv.exists() else "")
    (half / "params-effective.yaml").write_text(yaml.safe_dump({"diffusion": cfg_dict["diffusion"],
                                                                "data": cfg_dict["data"]}, sort_keys=False))
    tar = work / f"base-{candidate}.tar"
    with tarfile.open(tar, "w") as fh:
        fh.add(half, arcname=f"demo-base-gpu-{candidate}")
    return tar


def salvage_candidate(candidate: str, tiny: bool, work: Path) -> Path | None:
    """A candidate killed before it finished: its newest checkpoint (accelerate's model.safetensors, the
    UNet's fp32 state) saved in the base layout, packed like a finished one."""
    from safetensors.torch import load_file

    from featinv import config
    from featinv.diffusion.base import create_demo_base
    from featinv.diffusion.train import LOSS_LOG

    ckpts = sorted((work / f"base-{candidate}" / "base.ckpt").glob("step-*[0-9]"))
    if not ckpts:
        return None
    cfg_dict = base_config(candidate, tiny)
    base = create_demo_base(config.typed(cfg_dict).diffusion.base)
    base.unet.load_state_dict(load_file(str(ckpts[-1] / "model.safetensors")))
    model = work / f"base-{candidate}" / "salvaged"
    base.save(model)
    (model / "training.json").write_text(json.dumps({"salvaged_from": ckpts[-1].name}) + "\n")
    return pack_base(candidate, model, ckpts[-1] / LOSS_LOG, cfg_dict, work)


# --------------------------------------------------------------------------------------------
# orchestration


def child(args) -> int:
    """One section (or one base candidate) in this process."""
    res = Result(Path(args.result))
    work = Path(args.work)
    deadline = now() + args.seconds
    try:
        if args.section == "base-candidate":
            train_candidate(res, args.candidate, args.tiny, deadline, Path(args.targets), work)
        else:
            fn = {"sampling": section_sampling, "training": section_training, "extraction": section_extraction}[args.section]
            if args.section == "sampling":
                fn(res, args.tiny, deadline)
            else:
                fn(res, args.tiny, deadline, work)
    except Exception as exc:  # noqa: BLE001
        res.update(error=f"{type(exc).__name__}: {str(exc)[:500]}")
        traceback.print_exc()
        return 1
    return 0


def spawn(argv: list[str], seconds: float, env: dict[str, str], inline: bool = False):
    """A section's process (inline: run it here and now, as the CPU test does, sparing the imports)."""
    if inline:
        return child(child_parser().parse_args([*argv, "--seconds", f"{seconds:.1f}"]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child", *argv, "--seconds", f"{seconds:.1f}"]
    return subprocess.Popen(cmd, env=env, start_new_session=False)


def wait(proc, limit: float) -> str:
    if isinstance(proc, int):  # ran inline
        return "ok" if proc == 0 else f"exit {proc}"
    try:
        proc.wait(timeout=max(1.0, limit))
        return "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "killed at its deadline"


def environment() -> dict[str, Any]:
    torch = _torch()
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count(),
                            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "peak_bf16_tflops_used": PEAK_BF16 / 1e12}
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        info.update(gpu=name, gpu_memory_gib=torch.cuda.get_device_properties(0).total_memory / 2**30,
                    datasheet_bf16_tflops=next((v / 1e12 for k, v in DATASHEET_BF16.items() if k in name), None))
    for mod in ("diffusers", "timm", "transformers", "accelerate", "zarr", "webdataset"):
        with contextlib.suppress(Exception):
            info[mod] = __import__(mod).__version__
    return info


def markdown(doc: dict[str, Any]) -> str:
    def f(v, nd=3):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.{nd}g}"
        return str(v)

    env = doc.get("environment", {})
    lines = [f"# GPU figures ({env.get('gpu', 'no GPU')}, {env.get('date_utc', '')})", "",
             f"torch {env.get('torch')}, diffusers {env.get('diffusers')}, timm {env.get('timm')}; "
             f"fraction of peak against {f(env.get('peak_bf16_tflops_used'))} TFLOP/s dense bf16"
             + (f" (datasheet {f(env.get('datasheet_bf16_tflops'))})" if env.get("datasheet_bf16_tflops") else "")
             + (" (tiny CPU run)" if doc.get("tiny") else ""), "",
             "| figure | rate | batch | TFLOP/s | of peak | peak GPU MiB | note |", "|---|---|---|---|---|---|---|"]
    s = doc.get("sampling", {})
    if s:
        lines.append(f"| sampling, featinv batched sampler ({s.get('steps')} DDIM steps, guidance 1.75) | "
                     f"{f(s.get('images_per_s'))} images/s | {f(s.get('batch_size'))} | {f(s.get('tflops'))} | "
                     f"{f(s.get('fraction_of_peak'))} | {f(s.get('peak_gpu_mib'), 6)} | {s.get('variant', '')} |")
        lines.append(f"| sampling, diffusers StableDiffusionControlNetPipeline | "
                     f"{f(s.get('images_per_s_diffusers_pipeline'))} images/s | 1 | | | | "
                     f"featinv / diffusers = {f(s.get('speedup_vs_diffusers_pipeline'))} |")
    t = doc.get("training", {})
    if t:
        lines.append(f"| training, ControlNet online views (whole step) | {f(t.get('samples_per_s'))} samples/s | "
                     f"{f(t.get('batch_size'))} | {f(t.get('tflops'))} | {f(t.get('fraction_of_peak'))} | "
                     f"{f(t.get('peak_gpu_mib'), 6)} | bound: {t.get('bound', '-')} |")
        lines.append(f"| training, GPU part alone | {f(t.get('samples_per_s_gpu_only'))} samples/s | "
                     f"{f(t.get('batch_size'))} | {f(t.get('tflops_gpu_only'))} | "
                     f"{f(t.get('fraction_of_peak_gpu_only'))} | | |")
    e = doc.get("extraction", {})
    for key in ("resnet50", "convnext_base"):
        x = e.get(key, {})
        if x:
            lines.append(f"| extraction {key} into zarr | {f(x.get('images_per_s'))} images/s | {f(e.get('batch_size'))} | "
                         f"{f(x.get('tflops'))} | {f(x.get('fraction_of_peak'))} | {f(x.get('peak_gpu_mib'), 6)} | "
                         f"decode only {f(x.get('images_per_s_decode_only'))}/s, GPU only "
                         f"{f(x.get('images_per_s_gpu_only'))}/s: bound {x.get('bound', x.get('error', '-'))} |")
    for name, c in doc.get("base", {}).get("candidates", {}).items():
        lines.append(f"| demo base candidate {name} train_base | {f(c.get('samples_per_s'))} samples/s | "
                     f"{f(c.get('batch_size'))} | | | | {f(c.get('steps'))} steps, final loss {f(c.get('final_loss'))}, "
                     f"{c.get('file', c.get('error', '-'))} |")
    lines.append("")
    for name in SECTIONS:
        sec = doc.get(name, {})
        if isinstance(sec, dict) and (sec.get("error") or sec.get("status") not in (None, "ok")):
            lines.append(f"- {name}: {sec.get('status')} {sec.get('error', '')}")
    if s.get("variants"):
        lines += ["", "Sampling variants (screened at a few steps):", ""]
        lines += [f"- {v.get('name')}: {f(v.get('images_per_s_screen'))} images/s"
                  + (" (kept)" if v.get("kept") else "") + (f" {v['error']}" if v.get("error") else "")
                  + (f" {v['skipped']}" if v.get("skipped") else "") for v in s["variants"]]
    return "\n".join(lines) + "\n"


PART = 15 << 20  # files come back up to 16 MiB each


def place(src: Path, out: Path, name: str) -> list[str]:
    """Copy ``src`` to ``out/name``, split into ``name.00``, ``name.01``, ... where it is over 15 MiB."""
    data = src.read_bytes()
    if len(data) <= PART:
        (out / name).write_bytes(data)
        return [name]
    names = []
    for i in range(0, len(data), PART):
        part = f"{name}.{i // PART:02d}"
        (out / part).write_bytes(data[i:i + PART])
        names.append(part)
    return names


def main_run(args) -> int:
    start = now()
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    deadline = start + args.budget
    doc: dict[str, Any] = {"tiny": args.tiny, "budget_s": args.budget}

    def save():
        doc["elapsed_s"] = now() - start
        (out / "gpu.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
        (out / "gpu.md").write_text(markdown(doc))

    try:
        doc["environment"] = environment()
    except Exception as exc:  # noqa: BLE001
        doc["environment"] = {"error": repr(exc)}
    log(f"environment: {doc['environment']}")
    save()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("PYTHONUNBUFFERED", "1")
    work = Path(tempfile.mkdtemp(prefix="gpu-bench-", dir=args.work or None))
    budgets = {k: (30 if args.tiny else v) for k, v in BUDGET.items()}
    sections = [s for s in SECTIONS if s in args.sections]

    for name in [s for s in sections if s != "base"]:
        seconds = min(budgets[name], deadline - now() - (args.base_min if "base" in sections else 0))
        if seconds < 10:
            doc[name] = {"status": "skipped: no time left"}
            save()
            continue
        log(f"section {name}: {seconds:.0f} s")
        result = work / f"{name}.json"
        t0 = now()
        proc = spawn([name, "--result", str(result), "--work", str(work)] + (["--tiny"] if args.tiny else []),
                     seconds - 3, env, args.inline)
        status = wait(proc, seconds)
        doc[name] = json.loads(result.read_text()) if result.exists() else {}
        doc[name].update(status=status, wall_s=now() - t0)
        log(f"section {name}: {status} after {now() - t0:.0f} s")
        save()

    if "base" in sections:
        t0 = now()
        base_doc: dict[str, Any] = {"candidates": {}, "overlays": list(OVERLAYS), "candidate_overrides": CANDIDATES}
        doc["base"] = base_doc
        try:
            shards = Path(args.base_shards) if args.base_shards else None
            if shards is not None and not (shards / "manifest.json").exists():
                raise FileNotFoundError(f"{shards}/manifest.json: build the demo-base-gpu shards (see the README)")
            targets = prepare_base_targets(args.tiny, work, shards)
            base_doc["targets_s"] = now() - t0
            save()
            seconds = deadline - now() - (2 if args.tiny else 15)
            procs = {}
            for c in args.candidates:
                result = work / f"base-{c}.json"
                procs[c] = (result, spawn(["base-candidate", "--candidate", c, "--targets", str(targets), "--result",
                                           str(result), "--work", str(work)] + (["--tiny"] if args.tiny else []),
                                          seconds - 5, env, args.inline))
            for c, (result, proc) in procs.items():
                status = wait(proc, deadline - now() - (1 if args.tiny else 10))
                entry = json.loads(result.read_text()) if result.exists() else {}
                entry["status"] = status
                tar = Path(entry["packed"]) if entry.get("packed") else None
                if tar is None or not tar.exists():
                    try:
                        tar = salvage_candidate(c, args.tiny, work)
                        entry["salvaged"] = tar is not None
                    except Exception as exc:  # noqa: BLE001
                        entry["salvage_error"] = f"{type(exc).__name__}: {exc}"
                        tar = None
                if tar is not None:
                    names = place(tar, out, f"demo-base-gpu-{c}.tar")
                    entry["file"] = " + ".join(names) + (f" (cat them into demo-base-gpu-{c}.tar)" if len(names) > 1 else "")
                    entry["file_mib"] = tar.stat().st_size / 2**20
                base_doc["candidates"][c] = entry
                save()
        except Exception as exc:  # noqa: BLE001
            base_doc["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
            traceback.print_exc()
        base_doc["wall_s"] = now() - t0
        save()
    log(f"done in {now() - start:.0f} s: {out / 'gpu.json'}")
    return 0


def child_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("section")
    p.add_argument("--result", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--candidate", default="a")
    p.add_argument("--targets", default="")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        return child(child_parser().parse_args(argv[1:]))
    if argv and argv[0] == "prepare":  # on a CPU, before the device run: the demo base's shards, to carry
        return prepare_base_shards(Path(argv[1]) if len(argv) > 1 else ROOT / ".gpubench" / "shards" / "demo-base-gpu")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("outdir")
    p.add_argument("--tiny", action="store_true", help="tiny models on the CPU (the test suite's run)")
    p.add_argument("--budget", type=float, default=float(os.environ.get("GPU_BENCH_BUDGET", 385)),
                   help="seconds for the whole run (every section stops by then)")
    p.add_argument("--base-min", type=float, default=120, help="seconds kept for the demo base")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--base-shards", default=str(ROOT / ".gpubench" / "shards" / "demo-base-gpu"),
                   help="demo-base-gpu shards built beforehand on a CPU ('' = synthetic, for tests)")
    p.add_argument("--work", default="", help="scratch directory (default: the system's temp)")
    p.add_argument("--inline", action="store_true",
                   help="run the sections in this process, one after another (no hard deadline per section)")
    return main_run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
