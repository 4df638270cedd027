"""Verbs of modular inversion: train every stage's inverses once, then one verb per analysis."""

from __future__ import annotations

import json

from featinv.verbs import Arg, verb

ANALYSIS_SECTIONS = ("modular", "modular_analyses", "backbones")
ANALYSIS_ARGS = (
    Arg("--shards", required=True),
    Arg("--model-dir", "where train-modular saved the inverses", required=True),
    Arg("--out-dir", "directory for the tables and figures", required=True))


def _weights(cfg) -> str | None:
    """The forward model's local weights file, where params name one."""
    return cfg.backbones.weights.get(cfg.modular.backbone)


def _analysis(args, cfg, analysis) -> None:
    """Run ``analysis(trained, modular_analyses, shards, out_dir)`` on the saved inverses."""
    from featinv.modular.trained import load_trained

    trained = load_trained(cfg.modular, args.model_dir, _weights(cfg))
    print(json.dumps(analysis(trained, cfg.modular_analyses, args.shards, args.out_dir), indent=1, default=str))


@verb("train modular and classic inverses of every stage", sections=("modular", "backbones"), args=(
    Arg("--shards", required=True),
    Arg("--model-dir", "directory for inverses.safetensors and meta.json", required=True),
    Arg("--loss-csv", required=True)))
def train_modular(args, cfg) -> None:
    from featinv.modular.trained import train_inverses

    print(json.dumps(train_inverses(cfg.modular, args.shards, args.model_dir, args.loss_csv, _weights(cfg)), indent=1))


@verb("modular vs classic inversion: reconstruction MSE by stage, parameter counts, grid",
      sections=ANALYSIS_SECTIONS, args=ANALYSIS_ARGS)
def modular_mse(args, cfg) -> None:
    from featinv.modular.analysis import mse_by_stage

    _analysis(args, cfg, mse_by_stage)


@verb("colour perturbations: pairwise MSE of recoloured versions by stage, task score per filter",
      sections=ANALYSIS_SECTIONS, args=ANALYSIS_ARGS)
def modular_colour(args, cfg) -> None:
    from featinv.modular.colour import colour_analysis

    _analysis(args, cfg, colour_analysis)


@verb("prediction-head inverses on the full class distribution and on one-hot, side by side",
      sections=ANALYSIS_SECTIONS, args=ANALYSIS_ARGS)
def modular_prediction(args, cfg) -> None:
    from featinv.modular.prediction import prediction_inverses

    _analysis(args, cfg, prediction_inverses)


@verb("DETR's detection errors: reconstructions of detected and missed objects by stage",
      sections=ANALYSIS_SECTIONS, args=ANALYSIS_ARGS)
def modular_detection(args, cfg) -> None:
    from featinv.modular.detection import detection_errors

    _analysis(args, cfg, detection_errors)


@verb("token noise: reconstructions of manipulated tokens", sections=ANALYSIS_SECTIONS, args=ANALYSIS_ARGS)
def modular_noise(args, cfg) -> None:
    from featinv.modular.noise import token_noise

    _analysis(args, cfg, token_noise)


@verb("intermediate layers fed to the trained inverses", sections=ANALYSIS_SECTIONS, args=ANALYSIS_ARGS)
def modular_layers(args, cfg) -> None:
    from featinv.modular.layers import intermediate_layers

    _analysis(args, cfg, intermediate_layers)


@verb("forward model fine-tuned with a reconstruction loss (eq. 3), per lambda",
      sections=ANALYSIS_SECTIONS, args=ANALYSIS_ARGS)
def modular_finetune(args, cfg) -> None:
    from featinv.modular.finetune import finetune

    _analysis(args, cfg, finetune)


@verb("ViT without self-attention among image tokens: accuracy as it is and fine-tuned",
      sections=ANALYSIS_SECTIONS, args=ANALYSIS_ARGS)
def modular_attention(args, cfg) -> None:
    from featinv.modular.attention import attention_analysis

    _analysis(args, cfg, attention_analysis)
