"""Batched, deterministic sampling from the base model, with or without a FeatInv ControlNet.

- Scheduler: DDIM (eta 0) by default, or another deterministic solver; ``steps`` denoising steps.
- Guidance on the text, as the official code does: the conditional branch gets the prompt, the
  unconditional one the empty prompt, and both keep the feature hint. Optionally also guidance on
  the hint itself (``sampling.hint_guidance`` s, off at 1): the text-guided estimate plus
  (s - 1)(eps(prompt, hint) - eps(prompt, no ControlNet)), i.e. without text guidance
  eps_base + s (eps_ctrl - eps_base): one more UNet branch per step.
- Determinism: the starting noise of (key, sample index, seed) comes from its own generator, the
  solvers add no noise, and every network call runs on at least ``MIN_ROWS`` rows (padding small
  batches), because CPU kernels for tiny batches differ in the last bits. So an image depends only
  on its key and seed, not on the batch size or how work is split across processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from featinv import rowstore
from featinv.config import Sampling
from featinv.diffusion.base import BaseModel
from featinv.diffusion.controlnet import FeatureControlNet
from featinv.devices import resolve_device
from featinv.distributed import processes
from featinv.features.store import conditioning
from featinv.plots import to_uint8
from featinv.sourceid import backbone_name

log = logging.getLogger(__name__)
MIN_ROWS = 8


def _schedulers() -> dict[str, Callable]:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    return {
        # eta = 0 (deterministic); the last step returns the predicted x0 (alpha_prev = 1).
        "ddim": lambda cfg, **kw: DDIMScheduler.from_config(cfg, clip_sample=False, set_alpha_to_one=True, **kw),
        "unipc": lambda cfg, **kw: UniPCMultistepScheduler.from_config(cfg, **kw),
        "dpmsolver": lambda cfg, **kw: DPMSolverMultistepScheduler.from_config(cfg, **kw),
    }


def make_scheduler(name: str, base: BaseModel, spacing: str = "leading"):
    """Solver ``name`` on the base model's noise schedule, visiting the timesteps ``spacing`` picks
    (``sampling.timestep_spacing``: leading, trailing or linspace)."""
    table = _schedulers()
    if name not in table:
        raise ValueError(f"unknown scheduler '{name}' (one of {', '.join(table)})")
    return table[name](base.noise_scheduler.config, timestep_spacing=spacing)


def control_strength(sampling: Sampling, backbone: str) -> float:
    """The ControlNet conditioning scale for a backbone's model (a source id: every layer of a backbone
    gets its setting): ``sampling.control_strength[backbone]``, 1.0 (the residuals as trained) where
    the backbone is not named."""
    return float(sampling.control_strength.get(backbone_name(backbone), 1.0))


def sampling_settings(sampling: Sampling, backbone: str, tuned: str | Path | None = None) -> tuple[float, float]:
    """(control strength, guidance scale) of a backbone's model: as ``sampling`` gives them, or under
    ``sampling.tuning: auto`` the cell ``tune_sampling`` chose for the model (its JSON, ``tuned``)."""
    if sampling.tuning == "fixed":
        return control_strength(sampling, backbone), float(sampling.guidance_scale)
    if not tuned:
        raise ValueError(f"sampling.tuning is auto but no tuning result of {backbone} was given (--tuned): "
                         "run tune_sampling first")
    chosen = json.loads(Path(tuned).read_text())
    return float(chosen["control_strength"]), float(chosen["guidance_scale"])


def noise_seed(key: str, sample: int, seed: int) -> int:
    digest = hashlib.sha256(f"{seed}:{key}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def initial_noise(keys: list[str], samples: list[int], seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(noise_seed(k, s, seed)))
                        for k, s in zip(keys, samples)])


def _padded(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor, min_rows: int = MIN_ROWS) -> torch.Tensor:
    """Run ``fn`` on at least ``min_rows`` rows (repeating the last row), return the real rows."""
    n = tensors[0].shape[0]
    if n >= min_rows:
        return fn(*tensors)
    pad = min_rows - n
    padded = [torch.cat([t, t[-1:].expand(pad, *t.shape[1:])]) for t in tensors]
    return fn(*padded)[:n]


def auto_batch_size(device: torch.device, latent_shape: tuple[int, ...]) -> int:
    """Feature maps per batch when ``batch_size`` is 0: 64 on CPU (faster than 32 or 16 in the
    README's benchmark); on GPU as many as the free memory allows at ~3 KB of activations per latent
    element (an SD-UNet estimate), between 8 and 512."""
    if device.type != "cuda":
        return 64
    free, _ = torch.cuda.mem_get_info(device)
    per_item = int(np.prod(latent_shape)) * 3000
    return int(max(8, min(512, free // per_item)))


@torch.inference_mode()
def denoise(base: BaseModel, net: FeatureControlNet | None, cond: torch.Tensor | None, noise: torch.Tensor,
            text: torch.Tensor, scheduler, steps: int, guidance: float, strength: float,
            min_rows: int = MIN_ROWS, hint_guidance: float = 1.0, start: torch.Tensor | None = None,
            start_t: int | None = None) -> torch.Tensor:
    """Run the reverse process from ``noise``; returns images in [-1, 1]. ``hint_guidance`` s != 1 adds
    (s - 1)(eps(prompt, hint) - eps(prompt, base alone)) at every step. With ``start`` (latents) and
    ``start_t``, the process begins at the schedule's first timestep <= ``start_t`` from ``start``
    noised to that step (SDEdit; the base model's ceiling probe)."""
    device = noise.device
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps
    if start is None:
        x = noise * scheduler.init_noise_sigma
    else:
        timesteps = timesteps[timesteps <= start_t]
        if not len(timesteps):
            raise ValueError(f"start_t {start_t} is below the schedule's last timestep")
        x = scheduler.add_noise(start, noise, timesteps[:1])
    n = x.shape[0]
    guided = guidance != 1.0
    text_c = text[0:1].expand(n, *text.shape[1:])
    text_u = text[1:2].expand(n, *text.shape[1:])

    # The hint depends on the feature map only: encode it once, not at every step and branch.
    hint = _padded(net.encoder, cond, min_rows=min_rows) if net is not None and cond is not None else None

    def eps(x_in, t_in, txt, h=None):
        extra = {}
        if net is not None and h is not None:
            down, mid = net(x_in, t_in, txt, scale=strength, hint=h)
            extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        return base.unet(x_in, t_in, encoder_hidden_states=txt, **extra).sample

    for t in timesteps:
        if guided:
            x_in = scheduler.scale_model_input(torch.cat([x, x]), t)
            h_in = torch.cat([hint, hint]) if hint is not None else None
            tt = t.expand(2 * n)
            args = (x_in, tt, torch.cat([text_c, text_u])) + ((h_in,) if h_in is not None else ())
            out = _padded(eps, *args, min_rows=min_rows)
            e_c, e_u = out.chunk(2)
            e = e_u + guidance * (e_c - e_u)
        else:
            x_in = scheduler.scale_model_input(x, t)
            args = (x_in, t.expand(n), text_c) + ((hint,) if hint is not None else ())
            e_c = e = _padded(eps, *args, min_rows=min_rows)
        if hint is not None and hint_guidance != 1.0:
            e_base = _padded(eps, scheduler.scale_model_input(x, t), t.expand(n), text_c, min_rows=min_rows)
            e = e + (hint_guidance - 1.0) * (e_c - e_base)
        x = scheduler.step(e, t, x).prev_sample
    return base.codec.decode(x)


@torch.inference_mode()
def sample_unconditional(base: BaseModel, n: int, prompt: str, scheduler: str, steps: int, guidance: float,
                         seed: int, key: str = "base-sample", batch_size: int = 64,
                         spacing: str = "leading") -> np.ndarray:
    """``n`` samples of the base model alone, (n, 3, R, R) uint8; sample i starts from the noise of
    key ``<key>-<i>`` (on the base model's device)."""
    device = next(base.unet.parameters()).device
    text = base.prompt_embeddings(prompt).to(device)
    out = []
    for start in range(0, n, batch_size):
        keys = [f"{key}-{i}" for i in range(start, min(n, start + batch_size))]
        noise = initial_noise(keys, [0] * len(keys), seed, base.latent_shape).to(device)
        out.append(to_uint8(denoise(base, None, None, noise, text, make_scheduler(scheduler, base, spacing), steps, guidance, 1.0)))
    return np.concatenate(out)


def sample_store(base: BaseModel, net: FeatureControlNet, features: str | Path, out: str | Path, cfg: Sampling,
                 strength: float, prompt: str, device: str = "auto", progress: bool = True,
                 guidance: float | None = None) -> dict[str, Any]:
    """Reconstruct every feature map of a feature store into ``out`` (a rowstore):
    ``images`` (N, S, 3, R, R) uint8 for S samples per map, and ``keys``, at control ``strength`` and
    ``guidance`` (None: ``cfg.guidance_scale``). Launched as several processes, each samples its
    share of the store's blocks (the summary is of that share)."""
    guidance = cfg.guidance_scale if guidance is None else guidance
    feats = rowstore.open_complete(features)
    variant = net.meta["variant"]
    cond_array = conditioning(feats, variant)
    keys = list(feats["keys"][:])
    n, samples = len(keys), cfg.samples_per_map
    dev = resolve_device(device)
    procs = processes(dev)
    base.to(dev)
    net.to(dev)
    text = base.prompt_embeddings(prompt).to(dev)
    batch_size = cfg.batch_size or auto_batch_size(dev, base.latent_shape)
    res = base.resolution
    attrs = {"model": net.meta, "features": str(features), "scheduler": cfg.scheduler, "steps": cfg.steps,
             "timestep_spacing": cfg.timestep_spacing, "hint_guidance": cfg.hint_guidance,
             "guidance_scale": guidance, "control_strength": strength, "seed": cfg.seed,
             "samples_per_map": samples, "resolution": res, "prompt": prompt}
    arrays = {"images": ((samples, 3, res, res), "uint8", 0), "keys": ((), "str", None)}
    group, resumed = rowstore.open_shared(out, n, arrays, cfg.rows_per_shard, cfg.rows_per_shard, attrs, procs)
    if not resumed:
        group["keys"][:] = np.array(keys, dtype=object)
    batches = rowstore.pending_batches(group, batch_size, procs)
    writer = rowstore.BlockWriter(group)
    precision = torch.bfloat16 if dev.type == "cuda" and cfg.precision == "auto" else None
    started = time.perf_counter()
    for rows in tqdm(batches, desc=f"sample {net.meta['backbone']} {variant}", unit="batch",
                     disable=not (progress and procs.is_main), mininterval=2.0):
        cond = torch.from_numpy(cond_array.get_orthogonal_selection((np.asarray(rows),)).astype(np.float32))
        cond = cond.repeat_interleave(samples, 0).to(dev)
        item_keys = [keys[r] for r in rows for _ in range(samples)]
        item_samples = [s for _ in rows for s in range(samples)]
        noise = initial_noise(item_keys, item_samples, cfg.seed, base.latent_shape).to(dev)
        with torch.autocast(dev.type, dtype=precision, enabled=precision is not None):
            images = denoise(base, net, cond, noise, text, make_scheduler(cfg.scheduler, base, cfg.timestep_spacing), cfg.steps,
                             guidance, strength, hint_guidance=cfg.hint_guidance)
        writer.add(rows, {"images": to_uint8(images).reshape(len(rows), samples, 3, res, res)})
    seconds = time.perf_counter() - started
    rowstore.finish_shared(out, procs)
    done = sum(len(r) for r in batches) * samples
    return {"n_maps": n, "samples_per_map": samples, "sampled": done, "seconds": seconds,
            "images_per_second": done / seconds if done and seconds > 0 else None, "batch_size": batch_size,
            "process": procs.rank, "processes": procs.world}
