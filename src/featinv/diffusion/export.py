"""Shipping a trained embedded base model: half-precision safetensors in the diffusers layout, and a
model card (``README.md``, :mod:`featinv.cards`) that lists every file with its sha256.

The weights are stored as float16 (half the bytes; the loader computes in float32). The card's
file table is what ``featinv.cards.verify`` checks, so a changed or corrupted file is caught.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from featinv.config import Params, plain
from featinv.diffusion.base import load_base
from featinv.cards import write_card


def export_base(model_dir: str | Path, out: str | Path) -> list[Path]:
    """Write the base model at ``model_dir`` to ``out`` with float16 weights; return the files written."""
    model_dir, out = Path(model_dir), Path(out)
    base = load_base(model_dir)
    if out.exists():
        shutil.rmtree(out)
    base.unet.to(torch.float16)
    base.text_encoder.to(torch.float16)
    base.save(out)
    return sorted(p for p in out.rglob("*") if p.is_file())


def parameter_counts(directory: str | Path) -> dict[str, int]:
    base = load_base(directory)
    return {"unet": sum(p.numel() for p in base.unet.parameters()),
            "text_encoder": sum(p.numel() for p in base.text_encoder.parameters())}


def json_block(data: dict[str, Any]) -> str:
    return "```json\n" + json.dumps(data, indent=1, sort_keys=True) + "\n```"


def ship_base(cfg: Params, model: str | Path, loss_csv: str | Path, shards: str | Path, targets: str | Path,
              out: str | Path, n: int = 256, history: str = "", backbone: str = "tf_efficientnet_lite0",
              params_files: tuple[str, ...] = ("params.yaml", "config/demo-base.yaml")) -> Path:
    """Ship the base model trained (rule ``train_base``) under params ``cfg`` at ``model`` to ``out``:
    float16 weights, ``samples.png`` (64 of ``n`` samples) and the model card with the loss record, the
    quality figures on ``backbone`` (FID and nearest-train cosine, samples vs real val crops) and the
    remake command (``params_files``: the params and overlays ``cfg`` was read from). Returns the card's path."""
    from featinv.data.target_view import view_images
    from featinv.diffusion.quality import base_figures, ceiling_probe, sample_base
    from featinv.diffusion.recipes import base_objective
    from featinv.plots import hwc, image_grid

    diffusion, sampling = cfg.diffusion, cfg.sampling
    base_cfg = diffusion.base
    training = json.loads((Path(model) / "training.json").read_text())
    with open(loss_csv) as fh:
        losses = [float(row["loss"]) for row in csv.DictReader(fh)]
    export_base(model, out)
    objective = base_objective(out, base_cfg, diffusion.prompt, targets)
    samples = sample_base(out, n, diffusion.prompt, sampling.scheduler, sampling.steps,
                          sampling.guidance_scale, sampling.seed, device=diffusion.device,
                          spacing=sampling.timestep_spacing)
    image_grid([[hwc(x) for x in samples[r:r + 16]] for r in range(0, 64, 16)]
               ).save(Path(out) / "samples.png")
    figures = base_figures(samples, shards, backbone, cfg.backbones.weights.get(backbone),
                           device=diffusion.device)
    probe = ceiling_probe(out, view_images(shards, "val", base_cfg.resolution).transpose(0, 3, 1, 2), backbone,
                          prompt=diffusion.prompt, scheduler=sampling.scheduler, steps=sampling.steps,
                          guidance=sampling.guidance_scale, seed=sampling.seed, spacing=sampling.timestep_spacing,
                          weights=cfg.backbones.weights.get(backbone), device=diffusion.device)
    manifest = json.loads((Path(shards) / "manifest.json").read_text())
    views = manifest["splits"]["train"].get("views")
    tail = losses[-200:]
    sections = [
        ("What it is", (
            "The frozen base model under the embedded default's FeatInv ControlNets, as miniSD is under the "
            "paper's. Trained by the pipeline's own `train_base` rule; shipped here so that the main job "
            "only trains ControlNets on it. Loaded by `featinv.diffusion.base.load_base` "
            "(`diffusion.base.source` in params.yaml); float16 safetensors, computed in float32.")),
        ("Data", (
            f"The demo train split (`data/shards/{manifest['dataset']}`): {manifest['splits']['train']['count']} "
            f"square crops of {len(manifest['classes'])} real photographs that ship in the scikit-image, "
            f"scikit-learn, matplotlib and foolbox wheels, taken from the left {1 - cfg.data.demo.val_fraction:.0%} "
            f"of each photo (val crops come from the right-hand strip, so no val pixels were seen), each as "
            f"{views['count'] if views else 1} cached views (view 0 the crop, the others random square crops of "
            f"{views['scale'] if views else '-'} of its area, flipped with p = 0.5): "
            f"{manifest['splits']['train']['count'] * (views['count'] if views else 1)} training images at "
            f"{base_cfg.resolution} px.")),
        ("Model", json_block({
            "unet": "diffusers UNet2DConditionModel", "parameters": parameter_counts(out),
            "space": f"pixels folded by space-to-depth (patch {base_cfg.patch}): "
                     f"{base_cfg.resolution} px RGB = {base_cfg.resolution // base_cfg.patch}^2 x {3 * base_cfg.patch ** 2}",
            **{k: plain(getattr(base_cfg, k)) for k in ("resolution", "patch", "block_out_channels",
                                                        "layers_per_block", "attention_heads", "text_hidden",
                                                        "text_layers", "prediction_type", "beta_schedule")},
            "text_encoder": "small CLIP text model frozen at its seeded initialisation (fixed prompt vs empty prompt)"})),
        ("Training", json_block({
            **plain(base_cfg.train), "wall_time_s": round(training.get("total_seconds", training["seconds"])), "resumed_from": training["resumed_from"],
            "loss_of_the_shipped_model_50_batches": objective,
            **({f"mean_logged_loss_last_{len(tail)}_steps": sum(tail) / len(tail)} if tail else {}),
            "logged_steps": len(losses),
            "device": "2-core CPU"}) + (f"\n\n{history}" if history else "")),
        ("Quality", (
            f"{figures['n_samples']} samples ({sampling.scheduler}, {sampling.steps} steps, {sampling.timestep_spacing} "
            f"timestep spacing, guidance "
            f"{sampling.guidance_scale}, seed {sampling.seed}; `samples.png` shows the first 64), scored on "
            f"{figures['backbone']} at {figures['resolution']} px against the {figures['n_train_views']} training views "
            f"and the {figures['n_val_images']} held-out val crops:\n\n"
            "| images | FID vs train views (pooled features) | mean nearest-train cosine per position |\n|---|---|---|\n"
            f"| base-model samples | {figures['fid_samples_vs_train']:.1f} | {figures['nearest_train_cosine_samples']:.3f} |\n"
            f"| real val crops | {figures['fid_val_vs_train']:.1f} | {figures['nearest_train_cosine_val']:.3f} |\n\n"
            + json_block(figures))),
        ("Ceiling probe", (
            f"Each of the {figures['n_val_images']} held-out val crops noised to step t and finished by this base "
            "alone (no ControlNet; the same sampler), scored on "
            f"{figures['backbone']}: mean cosine per position of the result against its own crop (own) and "
            "against the crop half the split away (mismatched). No ControlNet keeps more of an image than the base "
            "keeps when handed the true image at its noisiest steps, so own - mismatched bounds FeatInv's margin "
            "on this base.\n\n| start t | own | mismatched | margin |\n|---|---|---|---|\n"
            + "".join(f"| {r['start_t']} | {r['own']:.3f} | {r['mismatched']:.3f} | {r['margin']:.3f} |\n" for r in probe))),
        ("Remake", (
            "```bash\n"
            "snakemake data/models/demo-base/base --cores all --configfile "
            f"{' '.join(f for f in params_files if Path(f).name != 'params.yaml')}\n"
            f"featinv export-base --params {' '.join(params_files)} --model {model} "
            f"--loss-csv {loss_csv} --shards {shards} --targets {targets} --out {out}\n```\n"
            "Training is deterministic given the seeds on one machine type; CPU kernels differ across machines in "
            "the last bits, so a remade model matches in quality, not byte for byte.")),
    ]
    front = {"library_name": "diffusers", "tags": ["featinv", "feature-inversion", "base-model"],
             "license": "other", "license_name": "licences-of-the-inputs", "datasets": [str(manifest["dataset"])],
             "featinv": {"kind": "base", "resolution": base_cfg.resolution, "patch": base_cfg.patch,
                         "prediction_type": base_cfg.prediction_type, "steps": base_cfg.train.steps,
                         "params_hash": training.get("params_hash"),
                         "wall_time_s": round(training.get("total_seconds", training["seconds"]))}}
    return write_card(out, front, "Demo base diffusion model (featinv embedded default)", sections, files=True)
