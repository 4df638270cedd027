"""``featinv bench-diffusion``: training and sampling throughput of FeatInv's diffusion parts.

Two shapes: the embedded demo models (from params.yaml) and paper-shaped models (miniSD-sized
UNet, ControlNet and VAE built from config with random weights: throughput needs no real weights).
Prints samples/s of training, images/s of sampling (batched; one image at a time with the same
components and steps; and diffusers' own ``StableDiffusionControlNetPipeline`` loop, one image per
call, driving the same UNet, ControlNet and scheduler: the peer a user would pick instead, all
measured in the same run), and on GPU the achieved FLOP/s as a fraction of the device's peak and the
peak GPU memory; on CPU the peak RSS.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import torch

from featinv.allocator import keep_freed_memory
from featinv.diffusion.controlnet import FeatureControlNet
from featinv.diffusion.sample import MIN_ROWS, auto_batch_size, denoise, make_scheduler
from featinv.diffusion.train import diffusion_loss
from featinv.devices import resolve_device

# Dense bf16 tensor-core peaks (FLOP/s), by substring of the device name.
PEAKS = {"H200": 790e12,  # H200: as measured here (8192^3 bf16 matmul ~788 TFLOP/s; issue 26), datasheet 989e12
          "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L40": 181e12,
         "A10": 125e12, "4090": 165e12}

SD_UNET = dict(sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
               block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
               down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, sample_size=256)


def _paper_base():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from featinv.diffusion.base import BaseModel, ddpm_scheduler
    from featinv.diffusion.codec import VaeCodec
    from featinv.diffusion.text import char_tokenizer, small_text_encoder

    unet = UNet2DConditionModel(**SD_UNET).eval().requires_grad_(False)
    vae = AutoencoderKL(**SD_VAE)
    tok = char_tokenizer()
    text = small_text_encoder(len(tok), 768, 1, 0)  # stands in for CLIP-L: the UNet sees 77 x 768 states
    sched = ddpm_scheduler()
    return BaseModel(unet, text, tok, sched, VaeCodec(vae), 256, "bench:paper-shaped"), (2048, 7, 7), 512


def _demo_base():
    from featinv import config
    from featinv.diffusion.base import create_demo_base

    params = config.typed(config.load())
    return create_demo_base(params.diffusion.base), (1280, 7, 7), params.controlnet.encoder.hidden


def flops(fn) -> float:
    """FLOPs of one call of ``fn`` (PyTorch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def step_flops(base, net: FeatureControlNet, text: torch.Tensor, fmap: tuple[int, ...], latent: tuple[int, ...],
               device) -> tuple[float, float]:
    """FLOPs per image of one denoising row (UNet + ControlNet, the hint encoded beforehand, as the
    sampler does) and of encoding its hint once."""
    hint = net.encoder(torch.randn(2, *fmap, device=device)).detach()

    def one_call():
        x = torch.randn(2, *latent, device=device)
        tt = torch.tensor([500, 500], device=device)
        down, mid = net(x, tt, text, scale=1.0, hint=hint)
        return base.unet(x, tt, encoder_hidden_states=text, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid)

    with torch.no_grad():
        return flops(one_call) / 2, flops(lambda: net.encoder(torch.randn(2, *fmap, device=device))) / 2


def peer_pipeline(base, net: FeatureControlNet):
    """diffusers' ``StableDiffusionControlNetPipeline`` over the base model's UNet, text encoder and
    scheduler and the FeatInv ControlNet. What it needed: ``prepare_image`` overridden to hand the
    ControlNet the feature hint as it is (the stock method resizes a pixel control image to the output
    size; the hint is already at the latent grid), the starting latents passed in, and
    ``output_type="latent"`` with the base model's own codec decoding (so the pixel-space demo base,
    which has no VAE, runs too). Its loop, scheduler calls and guidance are diffusers' own."""
    from diffusers import StableDiffusionControlNetPipeline

    from featinv.diffusion.codec import VaeCodec

    class FeatureHintPipeline(StableDiffusionControlNetPipeline):
        def prepare_image(self, image, width, height, batch_size, num_images_per_prompt, device, dtype,
                          do_classifier_free_guidance=False, guess_mode=False):
            image = image.to(device=device, dtype=dtype).repeat_interleave(batch_size // image.shape[0], 0)
            return torch.cat([image] * 2) if do_classifier_free_guidance and not guess_mode else image

    pipe = FeatureHintPipeline(vae=base.codec.vae if isinstance(base.codec, VaeCodec) else None,
                               text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
                               controlnet=net.controlnet, scheduler=make_scheduler("ddim", base), safety_checker=None,
                               feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_scale(scale: str, device: torch.device, steps: int, batch_size: int, train_steps: int,
                train_batch: int = 8) -> dict[str, Any]:
    base, fmap, hidden = _paper_base() if scale == "paper" else _demo_base()
    base.to(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    net = FeatureControlNet.from_unet(base.unet, fmap[0], fmap[1:], hidden, 2, False, {"backbone": "bench", "variant": "unpooled"})
    net.to(device)
    text = base.prompt_embeddings("a high-quality, detailed, and professional image").to(device)
    latent = base.latent_shape
    # The allocator policy every featinv command applies (idempotent): reported, and in force when called from Python.
    out: dict[str, Any] = {"scale": scale, "device": str(device), "allocator": keep_freed_memory()}

    # Training: ControlNet step (frozen UNet), the paper's setup.
    opt = torch.optim.AdamW(net.parameters(), lr=1e-5)
    lat = torch.randn(train_batch, *latent, device=device)
    cond = torch.randn(train_batch, *fmap, device=device)
    t = torch.randint(0, 1000, (train_batch,), device=device)
    txt = text[0:1].expand(train_batch, -1, -1)

    def train_step():
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            loss = diffusion_loss(base.unet, base.noise_scheduler, lat, txt, torch.randn_like(lat), t,
                                  residuals=lambda x, tt, tx: net(x, tt, tx, cond))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    base.noise_scheduler.alphas_cumprod = base.noise_scheduler.alphas_cumprod.to(device)
    train_step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(train_steps):
        train_step()
    _sync(device)
    out["train_samples_per_s"] = train_steps * train_batch / (time.perf_counter() - t0)
    train_flops = 3 * flops(lambda: diffusion_loss(base.unet, base.noise_scheduler, lat, txt, lat, t,
                                                    residuals=lambda x, tt, tx: net(x, tt, tx, cond)).detach())
    out["train_flops_per_sample"] = train_flops / train_batch
    net.eval()

    # Sampling: batched vs one image at a time, same components and steps, guidance 1.75.
    b = batch_size or auto_batch_size(device, latent)
    sched = make_scheduler("ddim", base)

    def run(n, min_rows):
        noise = torch.randn(n, *latent, device=device)
        c = torch.randn(n, *fmap, device=device)
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            denoise(base, net, c, noise, text, sched, steps, 1.75, 1.0, min_rows=min_rows)

    run(min(b, 2), MIN_ROWS)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    run(b, MIN_ROWS)
    _sync(device)
    batched = b / (time.perf_counter() - t0)
    single_n = 2 if scale == "paper" and device.type == "cpu" else 4
    t0 = time.perf_counter()
    for _ in range(single_n):
        run(1, 1)
    _sync(device)
    single = single_n / (time.perf_counter() - t0)
    pipe = peer_pipeline(base, net)

    def peer():  # one image per call, as a user of the stock pipeline samples; hint encoded per call
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            hint = net.encoder(torch.randn(1, *fmap, device=device))
            latents = pipe(prompt_embeds=text[0:1], negative_prompt_embeds=text[1:2], image=hint,
                           num_inference_steps=steps, guidance_scale=1.75, controlnet_conditioning_scale=1.0,
                           latents=torch.randn(1, *latent, device=device), output_type="latent").images
            base.codec.decode(latents)

    peer()  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(single_n):
        peer()
    _sync(device)
    stock = single_n / (time.perf_counter() - t0)
    per_image_step, per_image_hint = step_flops(base, net, text, fmap, latent, device)
    out.update({"sampling_steps": steps, "guidance": 1.75, "batch_size": b, "images_per_s": batched,
                "images_per_s_one_at_a_time": single, "batched_speedup": batched / single,
                "images_per_s_diffusers_pipeline": stock, "speedup_vs_diffusers_pipeline": batched / stock,
                "sampling_flops_per_image": per_image_step * 2 * steps + per_image_hint})
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAKS.items() if k in name), None)
        achieved = out["sampling_flops_per_image"] * batched
        out.update({"gpu": name, "sampling_tflops": achieved / 1e12,
                    "train_tflops": train_flops / train_batch * out["train_samples_per_s"] / 1e12,
                    "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20})
        if peak:
            out["sampling_fraction_of_peak"] = achieved / peak
            out["train_fraction_of_peak"] = out["train_tflops"] * 1e12 / peak
    else:
        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def bench(device: str, scale: str, steps: int = 0, batch_size: int = 0, train_steps: int = 5) -> list[dict]:
    dev = resolve_device(device)
    results = []
    for s in (["demo", "paper"] if scale == "both" else [scale]):
        n_steps = steps or (20 if s == "demo" else 50)
        r = bench_scale(s, dev, n_steps, batch_size, train_steps)
        results.append(r)
        print(f"== {s}-shaped models on {r['device']}")
        for k, v in r.items():
            print(f"{k:>32}: {v:.4g}" if isinstance(v, float) else f"{k:>32}: {v}")
    return results
