"""Verbs of modular inversion: train every stage's inverses once, then one verb per analysis."""

from __future__ import annotations

import json

from featinv.verbs import Arg, Verb, verb

ANALYSIS_SECTIONS = ("modular", "modular_analyses", "backbones")
ANALYSIS_ARGS = (
    Arg("--shards", required=True),
    Arg("--model-dir", "where train-modular saved the inverses", required=True),
    Arg("--out-dir", "directory for the tables and figures", required=True))


def _weights(cfg) -> str | None:
    """The forward model's local weights file, where params name one."""
    return cfg.backbones.weights.get(cfg.modular.backbone)


def _analysis(args, cfg, runs: str) -> None:
    """Run the analysis ``runs`` (``module:function``, called as ``f(trained, modular_analyses, shards,
    out_dir)``) on the saved inverses."""
    import importlib

    from featinv.modular.trained import load_trained

    module, function = runs.split(":")
    analysis = getattr(importlib.import_module(module), function)
    trained = load_trained(cfg.modular, args.model_dir, _weights(cfg))
    print(json.dumps(analysis(trained, cfg.modular_analyses, args.shards, args.out_dir), indent=1, default=str))


@verb("train modular and classic inverses of every stage", sections=("modular", "backbones"), args=(
    Arg("--shards", required=True),
    Arg("--model-dir", "directory for inverses.safetensors and meta.json", required=True),
    Arg("--loss-csv", required=True)))
def train_modular(args, cfg) -> None:
    from featinv.modular.trained import train_inverses

    print(json.dumps(train_inverses(cfg.modular, args.shards, args.model_dir, args.loss_csv, _weights(cfg)), indent=1))


# The analyses, each one verb (= rule) reading the saved inverses: name, help, what it runs.
ANALYSES = (
    ("modular_mse", "modular vs classic inversion: reconstruction MSE by stage, parameter counts, grid",
     "featinv.modular.analysis:mse_by_stage"),
    ("modular_colour", "colour perturbations: pairwise MSE of recoloured versions by stage, task score per filter",
     "featinv.modular.colour:colour_analysis"),
    ("modular_prediction", "prediction-head inverses on the full class distribution and on one-hot, side by side",
     "featinv.modular.prediction:prediction_inverses"),
    ("modular_detection", "DETR's detection errors: reconstructions of detected and missed objects by stage",
     "featinv.modular.detection:detection_errors"),
    ("modular_noise", "token noise: reconstructions of manipulated tokens", "featinv.modular.noise:token_noise"),
    ("modular_layers", "intermediate layers fed to the trained inverses",
     "featinv.modular.layers:intermediate_layers"),
    ("modular_finetune", "forward model fine-tuned with a reconstruction loss (eq. 3), per lambda",
     "featinv.modular.finetune:finetune"),
    ("modular_attention", "ViT without self-attention among image tokens: accuracy as it is and fine-tuned",
     "featinv.modular.attention:attention_analysis"),
)


def _declare(name: str, help: str, runs: str) -> Verb:
    def run(args, cfg) -> None:
        _analysis(args, cfg, runs)

    run.__name__ = name
    return Verb(name, run, help, ANALYSIS_SECTIONS, ANALYSIS_ARGS, runs=runs)


globals().update({name: _declare(name, help, runs) for name, help, runs in ANALYSES})
