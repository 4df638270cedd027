"""What gets trained: the embedded base model, and one FeatInv ControlNet per (backbone, variant)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from featinv import rowstore
from featinv.cards import controlnet_card
from featinv.config import Controlnet, DiffusionBase, plain
from featinv.diffusion.base import BaseModel, create_demo_base, load_base
from featinv.diffusion.controlnet import FeatureControlNet
from featinv.diffusion.train import RowData, TrainingRows, batch_rows, diffusion_loss, run, step_generator
from featinv.features.store import conditioning
from featinv.fileio import write_json


def draw_timesteps(gen: torch.Generator, n: int, timesteps: int, how: str) -> torch.Tensor:
    """``uniform`` over [0, T); ``cubic``: t = (1 - u^3) T for uniform u, so that noisy steps, where the
    layout of the image is decided and the hint matters most, are drawn more often (T2I-Adapter)."""
    if how == "uniform":
        return torch.randint(0, timesteps, (n,), generator=gen)
    if how == "cubic":
        u = torch.rand(n, generator=gen)
        return ((1 - u**3) * timesteps).long().clamp(0, timesteps - 1)
    raise ValueError(f"unknown timestep sampling '{how}' (uniform or cubic)")


def _draws(gen: torch.Generator, n: int, part: slice, shape: tuple[int, ...], timesteps: int, drop_prob: float,
           emb: torch.Tensor, device, how: str = "uniform") -> tuple[torch.Tensor, ...]:
    """This process's slice of the step's noise, timesteps and drop mask (drawn for the whole global batch
    from the step's generator), and the text: the prompt, or the empty prompt where dropped."""
    noise = torch.randn((n, *shape), generator=gen)[part].to(device)
    t = draw_timesteps(gen, n, timesteps, how)[part].to(device)
    drop = (torch.rand(n, generator=gen) < drop_prob)[part].to(device)
    e = emb.to(device)
    return noise, t, drop, torch.where(drop[:, None, None], e[1], e[0])


def checkpoint_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".ckpt")


def train_base(base_cfg: DiffusionBase, prompt: str, targets: str | Path, out: str | Path, loss_csv: str | Path,
               params_hash: str, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Train the embedded base model on the cached targets of the demo train split; save it to ``out``
    (``params_hash``: the job's, recorded in ``training.json``)."""
    base = create_demo_base(base_cfg)
    store = rowstore.open_complete(targets)
    if tuple(store["latents"].shape[1:]) != base.latent_shape:
        raise ValueError(f"targets {targets} have shape {store['latents'].shape[1:]}, the base model expects {base.latent_shape}")
    data = _cached_targets(store, base_cfg)
    emb = base.prompt_embeddings(prompt)
    settings = base_cfg.train
    sched = base.noise_scheduler
    shape = base.latent_shape

    def loss_fn(model, batch, gen, n, part):
        noise, t, _, text = _draws(gen, n, part, shape, sched.config.num_train_timesteps, settings.drop_prob, emb,
                                   batch["latents"].device, settings.timesteps)
        return diffusion_loss(model, sched, batch["latents"], text, noise, t, snr_gamma=settings.snr_gamma, loss=settings.loss)

    def save(unet: torch.nn.Module) -> None:
        base.unet = unet.requires_grad_(False)
        base.save(out)

    result = run(base.unet, [base.text_encoder], loss_fn, data, settings, device, checkpoint_dir(out), loss_csv,
                 desc="base model", progress=progress)
    return finish(result, params_hash, out, save)


@torch.no_grad()
def base_objective(base_dir: str | Path, base_cfg: DiffusionBase, prompt: str, targets: str | Path,
                   batches: int = 50) -> float:
    """The training objective of a base model, measured on it: the mean loss over ``batches`` batches
    drawn as training would draw the steps after its last (same rows, noise, timesteps and drops)."""
    base = load_base(base_dir)
    data = _cached_targets(rowstore.open_complete(targets), base_cfg)
    settings = base_cfg.train
    emb, sched = base.prompt_embeddings(prompt), base.noise_scheduler
    n = settings.batch_size
    losses = []
    for step in range(settings.steps, settings.steps + batches):
        batch = data.get(batch_rows(step, n, data.n, settings.seed))["latents"]
        noise, t, _, text = _draws(step_generator(settings.seed, step), n, slice(0, n), base.latent_shape,
                                   sched.config.num_train_timesteps, settings.drop_prob, emb, "cpu", settings.timesteps)
        losses.append(diffusion_loss(base.unet, sched, batch, text, noise, t, snr_gamma=settings.snr_gamma, loss=settings.loss).item())
    return float(sum(losses) / len(losses))


def _cached_targets(store, base_cfg: DiffusionBase) -> RowData:
    """The base model's training rows: every cached view, or (augment ``none``) each image itself."""
    mode = base_cfg.train.augment.mode
    if mode == "online":
        raise ValueError("diffusion.base.train.augment.mode: online is for ControlNets; the base model trains on "
                         "cached targets (none or views)")
    keys = [str(k) for k in store["keys"][:]]
    return RowData({"latents": store["latents"]}, select=first_views(keys) if mode == "none" else None)


def first_views(keys: list[str]) -> np.ndarray:
    """Rows that hold an image itself, not one of its other cached views (``<key>@v<k>``, k > 0)."""
    return np.array([i for i, k in enumerate(keys) if "@v" not in k or k.endswith("@v0")], dtype=np.int64)


def cached_rows(features: str | Path, targets: str | Path, variant: str, first_only: bool
                ) -> tuple[RowData, dict[str, Any], dict[str, Any]]:
    """(latents, cond) training rows from a feature store and the targets of the same keys (a clear
    error where they differ), with both stores' attrs. ``cond``: what ``variant`` is conditioned on;
    ``first_only``: each image itself, not its other cached views (augment ``none``)."""
    feats, tgts = rowstore.open_complete(features), rowstore.open_complete(targets)
    keys = [str(k) for k in feats["keys"][:]]
    if keys != [str(k) for k in tgts["keys"][:]]:
        raise ValueError(f"{features} and {targets} do not hold the same samples in the same order")
    data = RowData({"latents": tgts["latents"], "cond": conditioning(feats, variant)},
                   select=first_views(keys) if first_only else None)
    return data, dict(feats.attrs), dict(tgts.attrs)


def train_controlnet(base: BaseModel, base_source: str, data: TrainingRows, attrs: dict[str, Any], variant: str,
                     cn_cfg: Controlnet, prompt: str, out: str | Path, loss_csv: str | Path, params_hash: str,
                     device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Train one FeatInv ControlNet for the backbone ``attrs`` describe (a feature store's attrs or
    ``Backbone.describe()``) on ``data``'s (latents, cond) rows: cached (``cached_rows``) or views drawn
    online (``OnlineViews``), whichever the caller was given; save to ``out``. ``params_hash``: the job's
    (``featinv.provenance.params_hash`` of the sections its verb reads), recorded in meta, card and
    ``training.json``."""
    pooled = variant == "pooled"
    fmap_shape = tuple(attrs["fmap_shape"])
    meta = {"backbone": attrs["backbone"], "layer": attrs["layer"], "weights_source": attrs["weights_source"],
            "fmap_shape": list(fmap_shape), "variant": variant, "base_model": base_source,
            "prompt": prompt, "params_hash": params_hash,
            # how the backbone saw each training image, for FeatInvPipeline.features
            "input_size": int(attrs["preprocessing"]["input_size"][-1]), "view": attrs.get("view", "eval_transform")}
    torch.manual_seed(cn_cfg.train.seed)
    net = FeatureControlNet.from_unet(base.unet, in_channels=fmap_shape[0], fmap_size=fmap_shape[1:],
                                      hidden=cn_cfg.encoder.hidden, depth=cn_cfg.encoder.depth,
                                      pooled=pooled, meta=meta,
                                      first_layer=cn_cfg.encoder.first_layer, levels=cn_cfg.encoder.levels,
                                      zero_last=cn_cfg.encoder.zero_last)
    emb = base.prompt_embeddings(prompt)
    settings = cn_cfg.train
    sched, unet = base.noise_scheduler, base.unet
    shape = base.latent_shape

    def loss_fn(model, batch, gen, n, part):
        noise, t, drop, text = _draws(gen, n, part, shape, sched.config.num_train_timesteps, settings.drop_prob, emb,
                                      batch["latents"].device, settings.timesteps)
        # Hint and prompt are dropped together (zeros, ""), as in the official code.
        keep = (~drop).float().view(-1, *([1] * (batch["cond"].ndim - 1)))
        cond = batch["cond"] * keep
        return diffusion_loss(unet, sched, batch["latents"], text, noise, t,
                              residuals=lambda noisy, tt, txt: model(noisy, tt, txt, cond), snr_gamma=settings.snr_gamma, loss=settings.loss)

    result = run(net, [unet, base.text_encoder], loss_fn, data, settings, device, checkpoint_dir(out), loss_csv,
                 desc=f"controlnet {attrs['backbone']} {variant}", progress=progress)

    def save(trained: FeatureControlNet) -> None:
        trained.meta.update({"steps": settings.steps, "final_loss": result["final_loss"]})
        trained.save_pretrained(out)
        controlnet_card(out, trained.meta, {**result, "params_hash": params_hash},
                        {"dataset": attrs.get("dataset"), "split": attrs.get("split"), "rows": data.n},
                        plain(settings))

    return finish(result, params_hash, out, save)


def finish(result: dict[str, Any], params_hash: str, out: str | Path, save: Callable[[Any], None]):
    """On the main process: save the trained module (``save``) and ``training.json``, then drop the
    checkpoints. Returns the training summary."""
    summary = {k: v for k, v in result.items() if k not in ("unwrapped", "is_main")} | {"params_hash": params_hash}
    if result["is_main"]:
        save(result["unwrapped"].eval())
        write_json(Path(out) / "training.json", summary)
        shutil.rmtree(checkpoint_dir(out), ignore_errors=True)
    return summary
