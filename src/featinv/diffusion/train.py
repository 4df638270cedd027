"""Training with the base model's own objective (noise, v or x0 prediction), under ``accelerate``.

One loop serves the embedded base UNet and the FeatInv ControlNets. Every step is a pure function
of (seed, step): its rows come from a seeded per-epoch permutation and its noise, timesteps and
drop mask from a generator seeded with (seed, step). With optimizer, LR-scheduler and RNG state
restored from the last checkpoint, a run interrupted at any point (kill -9) and rerun continues
exactly where it was, and on CPU ends with the same weights as an uninterrupted run.

Multi-process (DDP): every process draws the same global batch and trains on its slice, so the
effective batch size stays ``batch_size`` whatever the process count.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from featinv.config import InverseTrain, Train
from featinv.devices import resolve_device

log = logging.getLogger(__name__)
ELAPSED = "featinv_elapsed.json"  # training seconds up to a checkpoint, saved beside it
LOSS_LOG = "featinv_loss.csv"  # the loss log up to a checkpoint


# What ``run`` trains under: a train section (controlnet.train and diffusion.base.train are ``Train``,
# inverse.train ``InverseTrain``; run reads the keys they share).
TrainSettings = Union[Train, InverseTrain]


class TrainingRows(Protocol):
    """What training draws its batches from: ``n`` rows, each step's values of some of them, on a device."""

    n: int

    def get(self, rows: np.ndarray, step: int) -> dict[str, torch.Tensor]: ...

    def to(self, device: torch.device) -> "TrainingRows": ...


class RowData:
    """Named per-row arrays (zarr or numpy), held in memory when they fit, else read per batch.
    ``select``: train on these rows of the arrays only (in this order), e.g. one view per image."""

    def __init__(self, arrays: dict[str, Any], memory_limit: int = 4 << 30, select: np.ndarray | None = None):
        sizes = {a.shape[0] for a in arrays.values()}
        if len(sizes) != 1:
            raise ValueError(f"training arrays have different row counts: { {k: a.shape[0] for k, a in arrays.items()} }")
        total_rows = sizes.pop()
        self.select = None if select is None else np.asarray(select)
        self.n = total_rows if self.select is None else len(self.select)
        total = sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in arrays.values())
        self.arrays = {k: np.asarray(a[:]) for k, a in arrays.items()} if total <= memory_limit else arrays

    def get(self, rows: np.ndarray, step: int | None = None) -> dict[str, torch.Tensor]:
        """The arrays' values at ``rows`` (the same at every ``step``: cached rows)."""
        if self.select is not None:
            rows = self.select[rows]
        order = np.argsort(rows)
        inverse = np.argsort(order)
        out = {}
        for name, arr in self.arrays.items():
            if isinstance(arr, np.ndarray):
                values = arr[rows]
            else:  # zarr: read sorted rows once, restore the batch order
                values = arr.get_orthogonal_selection((rows[order],))[inverse]
            out[name] = torch.from_numpy(np.ascontiguousarray(values)).float()
        return out

    def to(self, device: torch.device) -> "RowData":
        return self  # batches are moved by the training loop


def batch_rows(step: int, batch_size: int, n: int, seed: int) -> np.ndarray:
    """The global batch of ``step``: consecutive slices of seeded per-epoch permutations."""
    start = step * batch_size
    rows: list[int] = []
    while len(rows) < batch_size:
        epoch, offset = divmod(start + len(rows), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        rows.extend(perm[offset : offset + batch_size - len(rows)].tolist())
    return np.asarray(rows)


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))


def _snr(noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    alphas = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas / (1 - alphas)


def snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023) for the scheduler's prediction type: the weight that
    turns the MSE of the prediction into the x0 MSE with the SNR capped at ``gamma``."""
    snr = _snr(noise_scheduler, timesteps)
    capped = snr.clamp(max=gamma)
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return capped / snr
    if kind == "v_prediction":
        return capped / (snr + 1)
    return capped  # sample (x0)


def x0_weights(noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Weights that turn the MSE of the scheduler's prediction into the MSE of the x0 it implies:
    1/SNR for epsilon, 1/(SNR + 1) for v, 1 for x0. With them a v-prediction model (whose x0 is
    sqrt(a) x_t - sqrt(1 - a) v, an identity skip at low noise) trains with the x0 objective's
    uniform weighting over timesteps."""
    snr = _snr(noise_scheduler, timesteps)
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return 1 / snr
    if kind == "v_prediction":
        return 1 / (snr + 1)
    return torch.ones_like(snr)  # sample (x0)


def diffusion_loss(unet, noise_scheduler, latents: torch.Tensor, text: torch.Tensor, noise: torch.Tensor,
                   timesteps: torch.Tensor, residuals: Callable | None = None, snr_gamma: float = 0.0,
                   loss: str = "prediction") -> torch.Tensor:
    """MSE of the UNet's prediction against its own target (epsilon, v or x0), optionally with ControlNet
    residuals computed from the noisy input, optionally min-SNR weighted (``snr_gamma`` > 0), or
    (``loss="x0"``) the MSE of the x0 the prediction implies, whatever its type."""
    if loss not in ("prediction", "x0"):
        raise ValueError(f"unknown loss '{loss}' (prediction or x0)")
    if loss == "x0" and snr_gamma > 0:
        raise ValueError("loss 'x0' and snr_gamma > 0 are two weightings: choose one")
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    extra = {}
    if residuals is not None:
        down, mid = residuals(noisy, timesteps, text)
        extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
    pred = unet(noisy, timesteps, encoder_hidden_states=text, **extra).sample
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    elif kind == "sample":
        target = latents
    else:
        raise ValueError(f"unsupported prediction_type '{kind}' (epsilon, v_prediction or sample)")
    if snr_gamma <= 0 and loss == "prediction":
        return F.mse_loss(pred.float(), target.float())
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    weights = x0_weights(noise_scheduler, timesteps) if loss == "x0" else snr_weights(noise_scheduler, timesteps, snr_gamma)
    return (weights * per_sample).mean()


def _latest_checkpoint(ckpt_dir: Path) -> tuple[int, Path | None]:
    done = sorted(ckpt_dir.glob("step-*[0-9]")) if ckpt_dir.exists() else []
    if not done:
        return 0, None
    return int(done[-1].name.split("-")[1]), done[-1]


def _read_log(path: Path, upto: int) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path) as fh:
        return [row for row in csv.DictReader(fh) if int(row["step"]) <= upto]


def run(trainable: nn.Module, frozen: list[nn.Module], loss_fn: Callable, data: TrainingRows, settings: TrainSettings, device: str,
        ckpt_dir: str | Path, loss_csv: str | Path, desc: str = "train", progress: bool = True) -> dict[str, Any]:
    """Train ``trainable``; ``loss_fn(model, batch, generator, n_global, rank_slice)`` returns the loss of
    this process's slice of the global batch."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler

    dev = resolve_device(device)
    # bf16 autocast runs on CPUs too (fast with AMX/AVX512-BF16); fp16 only on GPUs.
    mp = settings.mixed_precision
    precision = "no" if mp == "fp32" or (mp == "fp16" and dev.type != "cuda") else mp
    if precision == "bf16" and dev.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log.warning("%s: mixed_precision bf16 on a CPU without native bf16 (AVX512-BF16 or AMX) runs emulated, "
                    "slower than fp32; set mixed_precision: fp32 (controlnet.train / diffusion.base.train) here", desc)
    accelerator = Accelerator(mixed_precision=precision,
                              cpu=dev.type == "cpu")
    set_seed(settings.seed)
    world, rank = accelerator.num_processes, accelerator.process_index
    if settings.batch_size % world:
        raise ValueError(f"batch_size {settings.batch_size} is not divisible by {world} processes")
    per_process = settings.batch_size // world
    for module in frozen:
        module.to(accelerator.device)
    data.to(accelerator.device)
    trainable.train()
    optimizer = torch.optim.AdamW([p for p in trainable.parameters() if p.requires_grad], lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    schedules = {"constant": "constant_with_warmup", "cosine": "cosine"}
    if settings.lr_schedule not in schedules:
        raise ValueError(f"unknown lr_schedule '{settings.lr_schedule}' ({' or '.join(schedules)})")
    lr_scheduler = get_scheduler(schedules[settings.lr_schedule], optimizer,
                                 num_warmup_steps=settings.lr_warmup_steps * world,
                                 num_training_steps=settings.steps * world)
    model, optimizer, lr_scheduler = accelerator.prepare(trainable, optimizer, lr_scheduler)

    ckpt_dir, loss_csv = Path(ckpt_dir), Path(loss_csv)
    start, latest = _latest_checkpoint(ckpt_dir)
    prior_seconds = 0.0  # training time before the last checkpoint, across interruptions
    if latest is not None:
        accelerator.load_state(str(latest))
        elapsed = latest / ELAPSED
        prior_seconds = float(json.loads(elapsed.read_text())["seconds"]) if elapsed.exists() else 0.0
        log.info("resuming %s from %s", desc, latest)
    # The loss log up to the checkpoint travels with it (a rerun by Snakemake deletes the CSV first).
    rows_log = _read_log(latest / LOSS_LOG if latest is not None and (latest / LOSS_LOG).exists() else loss_csv, start)
    loss_csv.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bar = tqdm(range(start, settings.steps), initial=start, total=settings.steps, desc=desc,
               disable=not (progress and accelerator.is_main_process), mininterval=2.0)
    loss_value = float("nan")
    for step in bar:
        rows = batch_rows(step, settings.batch_size, data.n, settings.seed)
        part = rows[rank * per_process:(rank + 1) * per_process]
        batch = {k: v.to(accelerator.device) for k, v in data.get(part, step).items()}
        with accelerator.accumulate(model), accelerator.autocast():
            loss = loss_fn(model, batch, step_generator(settings.seed, step), settings.batch_size,
                           slice(rank * per_process, (rank + 1) * per_process))
            accelerator.backward(loss)
            if accelerator.sync_gradients and settings.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        loss_value = accelerator.reduce(loss.detach(), reduction="mean").item()
        rows_log.append({"step": str(step + 1), "loss": f"{loss_value:.6f}", "lr": f"{lr_scheduler.get_last_lr()[0]:.3e}"})
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps:
            _checkpoint(accelerator, ckpt_dir, step + 1, prior_seconds + time.perf_counter() - started, rows_log)
            if accelerator.is_main_process:
                _write_log(loss_csv, rows_log)
    bar.close()
    if accelerator.is_main_process:
        _write_log(loss_csv, rows_log)
    seconds = time.perf_counter() - started
    trained = settings.steps - start
    return {"steps": settings.steps, "resumed_from": start, "final_loss": loss_value, "seconds": seconds,
            "total_seconds": prior_seconds + seconds,
            "samples_per_second": trained * settings.batch_size / seconds if trained and seconds > 0 else None,
            "unwrapped": accelerator.unwrap_model(model), "is_main": accelerator.is_main_process}


def _checkpoint(accelerator, ckpt_dir: Path, step: int, seconds: float, rows_log: list[dict[str, str]]) -> None:
    """Save model, optimizer, LR scheduler and RNG state, the training time and the loss log so far;
    keep only the newest complete checkpoint."""
    final = ckpt_dir / f"step-{step:08d}"
    tmp = ckpt_dir / f"step-{step:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / ELAPSED).write_text(json.dumps({"seconds": seconds}) + "\n")
        _write_log(tmp / LOSS_LOG, rows_log)
        tmp.rename(final)
        for old in ckpt_dir.glob("step-*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)


def _write_log(path: Path, rows: list[dict[str, str]]) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "loss", "lr"])
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
