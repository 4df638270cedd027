"""Verbs of the diffusion stage: targets, the base model, ControlNet training and sampling."""

from __future__ import annotations

import json

from featinv.provenance import params_hash
from featinv.verbs import Arg, verb

BASE = Arg("--base", "base model directory or hub id", required=True)


@verb("cache a split's diffusion targets (encoded images)", sections=("diffusion",), args=(
    Arg("--shards", required=True), Arg("--split", required=True), Arg("--out", required=True)))
def encode_targets(args, cfg) -> None:
    from featinv.diffusion.targets import encode_targets as encode
    from featinv.diffusion.targets import target_codec

    diffusion = cfg.diffusion
    codec, name = target_codec(diffusion)
    summary = encode(codec, name, args.shards, args.split, args.out, diffusion.base.resolution,
                     batch_size=diffusion.targets.batch_size, num_workers=diffusion.targets.num_workers,
                     device=diffusion.device)
    print(json.dumps(summary, indent=1))


@verb("train the embedded base diffusion model", sections=("diffusion",), processes=True, args=(
    Arg("--targets", "cached targets of the train split", required=True),
    Arg("--out", "output directory (diffusers layout)", required=True),
    Arg("--loss-csv", required=True)))
def train_base(args, cfg) -> None:
    from featinv.diffusion.recipes import train_base as train

    diffusion = cfg.diffusion
    if diffusion.base.source != "train":
        raise ValueError(f"diffusion.base.source is '{diffusion.base.source}': a pretrained base model is loaded, not trained")
    summary = train(diffusion.base, diffusion.prompt, args.targets, args.out, args.loss_csv, params_hash(cfg),
                    device=diffusion.device)
    print(json.dumps(summary, indent=1))


@verb("a grid of base-model samples under training images", sections=("diffusion", "sampling"), args=(
    Arg("--base", required=True), Arg("--targets", required=True), Arg("--out", "PNG", required=True)))
def preview_base(args, cfg) -> None:
    from featinv.diffusion.preview import preview_base as preview

    preview(args.base, args.targets, args.out, cfg.diffusion, cfg.sampling)


@verb("ship a trained embedded base model: float16 weights and a model card", args=(
    Arg("--params", "params.yaml and the overlay it was trained under", required=True, nargs="+"),
    Arg("--model", "the trained base model (rule train_base)", required=True),
    Arg("--loss-csv", required=True),
    Arg("--shards", "the shards it was trained on", required=True),
    Arg("--targets", "the cached targets it was trained on", required=True),
    Arg("--out", "directory to ship (replaced)", required=True),
    Arg("--n", "samples for the model card's figures", type=int, default=256),
    Arg("--history", "how the training run went (interruptions, resumes), for the card", default=""),
    Arg("--backbone", "backbone of the card's figures", default="tf_efficientnet_lite0")))
def export_base(args, cfg) -> None:
    from featinv import config
    from featinv.diffusion.export import ship_base

    card = ship_base(config.typed(config.load(*args.params)), args.model, args.loss_csv, args.shards, args.targets, args.out,
                     n=args.n, history=args.history, backbone=args.backbone, params_files=tuple(args.params))
    print(card.read_text())


@verb("train one FeatInv ControlNet", sections=("diffusion", "controlnet", "backbones"), processes=True, args=(
    BASE,
    Arg("--features", "feature store of the train split (cached views: augment none or views)"),
    Arg("--targets", "cached targets of the train split (cached views)"),
    Arg("--shards", "shard directory, whose images give views drawn at every step (augment online)"),
    Arg("--backbone", "backbone whose maps condition it (with --shards)"),
    Arg("--split", "split trained on (with --shards)", default="train"),
    Arg("--variant", "unpooled (the spatial map) or pooled (the baseline)", required=True),
    Arg("--out", required=True),
    Arg("--loss-csv", required=True)))
def train_controlnet(args, cfg) -> None:
    from featinv.diffusion import recipes
    from featinv.diffusion.base import load_base

    # What it trains on is what the rule gave it (controlnet.train.augment.mode decides that, once, there).
    online, cached = bool(args.shards and args.backbone), bool(args.features and args.targets)
    if online == cached:
        raise ValueError("train-controlnet trains from --features and --targets (cached views) or from --shards "
                         "and --backbone (views drawn online), one of the two")
    base = load_base(args.base, cfg.diffusion.base.resolution)
    augment = cfg.controlnet.train.augment
    data: recipes.TrainingRows
    if online:
        from featinv.backbones import create_backbone
        from featinv.data.shards import index_split
        from featinv.diffusion.online import OnlineViews
        from featinv.sourceid import backbone_name

        name = backbone_name(args.backbone)
        backbone = create_backbone(args.backbone, weights=cfg.backbones.weights.get(name),
                                   input_size=cfg.backbones.input_size.get(name))
        data = OnlineViews(index_split(args.shards, args.split, views=False), backbone, base.codec, base.resolution,
                           args.variant, augment, cfg.controlnet.train.seed)
        attrs = backbone.describe()
    else:
        data, attrs, _ = recipes.cached_rows(args.features, args.targets, args.variant, augment.mode == "none")
    summary = recipes.train_controlnet(base, str(args.base), data, attrs, args.variant, cfg.controlnet,
                                       cfg.diffusion.prompt, args.out, args.loss_csv, params_hash(cfg),
                                       device=cfg.diffusion.device)
    print(json.dumps(summary, indent=1))


@verb("reconstruct a feature store's maps with a trained ControlNet", sections=("diffusion", "sampling"),
      processes=True, args=(
          Arg("--model", "trained ControlNet directory", required=True),
          BASE,
          Arg("--features", "feature store of the sampling split", required=True),
          Arg("--out", "output sample store (zarr)", required=True),
          Arg("--tuned", "the model's tune_sampling choice (JSON; sampling.tuning: auto)", default="")))
def sample(args, cfg) -> None:
    from featinv.diffusion.base import load_base
    from featinv.diffusion.controlnet import FeatureControlNet
    from featinv.diffusion.sample import sample_store, sampling_settings

    sampling = cfg.sampling
    net = FeatureControlNet.from_pretrained(args.model)
    base = load_base(args.base, cfg.diffusion.base.resolution)
    strength, guidance = sampling_settings(sampling, net.meta["backbone"], args.tuned)
    summary = sample_store(base, net, args.features, args.out, sampling, strength, cfg.diffusion.prompt,
                           device=cfg.diffusion.device, guidance=guidance)
    print(json.dumps(summary, indent=1))


@verb("train the deterministic inverse (a plain decoder, pixel MSE) of a backbone's map, FeatInv's comparison",
      sections=("inverse", "diffusion"), processes=True, args=(
          Arg("--features", "feature store of the train split", required=True),
          Arg("--targets", "cached targets of the train split", required=True),
          Arg("--out", "output directory", required=True),
          Arg("--loss-csv", required=True)))
def train_inverse(args, cfg) -> None:
    from featinv.diffusion.inverse import train_inverse as train
    from featinv.diffusion.targets import target_codec

    codec, _ = target_codec(cfg.diffusion)
    summary = train(args.features, args.targets, codec, cfg.inverse, args.out, args.loss_csv, params_hash(cfg),
                    device=cfg.diffusion.device)
    print(json.dumps(summary, indent=1))


@verb("reconstruct a feature store's maps with a trained deterministic inverse (a sample store)",
      sections=("inverse", "diffusion"), args=(
          Arg("--model", "trained inverse directory", required=True),
          Arg("--features", "feature store of the sampling split", required=True),
          Arg("--out", "output sample store (zarr)", required=True)))
def invert(args, cfg) -> None:
    from featinv.diffusion.inverse import invert_store

    summary = invert_store(args.model, args.features, args.out, batch_size=cfg.inverse.batch_size,
                           device=cfg.diffusion.device)
    print(json.dumps(summary, indent=1))


@verb("choose a model's control strength and guidance scale on a subset of the sampling split (paper 4.1)",
      sections=("diffusion", "sampling", "metrics", "backbones"), args=(
          Arg("--model", "trained ControlNet directory", required=True),
          BASE,
          Arg("--features", "feature store of the sampling split", required=True),
          Arg("--out-csv", "every cell of the grid", required=True),
          Arg("--out-png", "heat map of top-1 match", required=True),
          Arg("--out-json", "the chosen cell (read by sample)", required=True)))
def tune_sampling(args, cfg) -> None:
    from featinv.diffusion.base import load_base
    from featinv.diffusion.controlnet import FeatureControlNet
    from featinv.diffusion.tuning import tune, write_tuning
    from featinv.sourceid import backbone_name

    net = FeatureControlNet.from_pretrained(args.model)
    base = load_base(args.base, cfg.diffusion.base.resolution)
    backbone = net.meta["backbone"]
    cells, maps = tune(base, net, args.features, cfg.sampling, cfg.metrics, cfg.diffusion.prompt,
                       weights=cfg.backbones.weights.get(backbone_name(backbone)), device=cfg.diffusion.device)
    chosen = write_tuning(cells, args.out_csv, args.out_png, args.out_json, f"{backbone}-{net.meta['variant']}", maps)
    print(json.dumps(chosen, indent=1))


@verb("a grid of originals above their reconstructions", args=(
    Arg("--samples", "sample store (zarr)", required=True),
    Arg("--shards", "shards holding the originals", required=True),
    Arg("--split", required=True),
    Arg("--n", "feature maps shown (evenly spaced over the store)", type=int, default=8),
    Arg("--out", "PNG", required=True)))
def preview_samples(args, cfg) -> None:
    from featinv.diffusion.preview import preview_samples as preview

    preview(args.samples, args.shards, args.split, args.out, n=args.n)


@verb("print training and sampling throughput", args=(
    Arg("--device", default="auto"),
    Arg("--scale", choices=("demo", "paper", "both"), default="both"),
    Arg("--steps", "sampling steps (0 = 20 demo / 50 paper)", type=int, default=0),
    Arg("--batch-size", "sampling batch (0 = automatic)", type=int, default=0),
    Arg("--train-steps", type=int, default=5)))
def bench_diffusion(args, cfg) -> None:
    from featinv.diffusion.bench import bench

    bench(args.device, args.scale, steps=args.steps, batch_size=args.batch_size, train_steps=args.train_steps)
