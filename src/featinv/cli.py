"""``featinv <verb>``: the one entry point every Snakemake rule calls, usable by hand with the same
arguments. Params sections arrive as one JSON object (``--config``) and are validated against the
schema."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from featinv import config as params
from featinv.fileio import write_json


def _json_arg(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None


def cmd_validate(args) -> None:
    params.load(*args.params)
    print(f"ok: {' + '.join(args.params)}")


def cmd_build_shards(args) -> None:
    from featinv.data.shards import build
    from featinv.data.sources import make_source

    data = params.validate_sections(args.config, "data")["data"]
    manifest = build(make_source(data), args.out, data["dataset"], data["splits"], data["per_class"],
                     data["shard_maxcount"], data["views"])
    for split, entry in manifest["splits"].items():
        print(f"{split}: {entry['count']} images in {len(entry['shards'])} shards")
    print(f"rejected: {manifest['rejected']} (see {Path(args.out) / 'rejected.tsv'})")


def cmd_extract(args) -> None:
    from featinv.backbones import create_backbone
    from featinv.features.extract import accuracy_report, extract

    feats = params.validate_sections(args.config, "features")["features"]
    backbone = create_backbone(args.backbone, weights=args.weights or None)
    summary = extract(backbone, args.shards, args.split, args.store, batch_size=feats["batch_size"],
                      num_workers=feats["num_workers"], device=feats["device"],
                      rows_per_shard=feats["rows_per_shard"], rows_per_chunk=feats["rows_per_chunk"],
                      topk=feats["topk"])
    if summary["process"]:
        return  # the main process reports, once the store is complete
    report = {**accuracy_report(args.store), "extraction": summary}
    if args.report:
        write_json(args.report, report)
    print(json.dumps(report, indent=1))


def cmd_bench_extract(args) -> None:
    from featinv.features.bench import bench_extract

    bench_extract(args.backbone, args.shards, args.split, batch_size=args.batch_size, device=args.device,
                  num_workers=args.num_workers, limit=args.limit)


def cmd_encode_targets(args) -> None:
    from featinv.diffusion.targets import encode_targets, target_codec

    diffusion = params.validate_sections(args.config, "diffusion")["diffusion"]
    codec, name = target_codec(diffusion)
    summary = encode_targets(codec, name, args.shards, args.split, args.out, diffusion["base"]["resolution"],
                             batch_size=diffusion["targets"]["batch_size"],
                             num_workers=diffusion["targets"]["num_workers"], device=diffusion["device"])
    print(json.dumps(summary, indent=1))


def cmd_train_base(args) -> None:
    from featinv.diffusion.recipes import train_base

    diffusion = params.validate_sections(args.config, "diffusion")["diffusion"]
    if diffusion["base"]["source"] != "train":
        raise ValueError(f"diffusion.base.source is '{diffusion['base']['source']}': a pretrained base model is loaded, not trained")
    summary = train_base(diffusion["base"], diffusion["prompt"], args.targets, args.out, args.loss_csv,
                         device=diffusion["device"])
    print(json.dumps(summary, indent=1))


def cmd_preview_base(args) -> None:
    from featinv.diffusion.preview import preview_base

    cfg = params.validate_sections(args.config, "diffusion", "sampling")
    preview_base(args.base, args.targets, args.out, cfg["diffusion"], cfg["sampling"])


def cmd_export_base(args) -> None:
    import csv

    from featinv.diffusion.export import export_base, json_block, parameter_counts, write_card
    from featinv.diffusion.quality import base_figures, sample_base
    from featinv.diffusion.recipes import base_objective
    from featinv.plots import hwc, image_grid

    cfg = params.load(*args.params)
    diffusion, sampling = cfg["diffusion"], cfg["sampling"]
    base_cfg = diffusion["base"]
    training = json.loads((Path(args.model) / "training.json").read_text())
    with open(args.loss_csv) as fh:
        losses = [float(row["loss"]) for row in csv.DictReader(fh)]
    export_base(args.model, args.out)
    objective = base_objective(args.out, base_cfg, diffusion["prompt"], args.targets)
    samples = sample_base(args.out, args.n, diffusion["prompt"], sampling["scheduler"], sampling["steps"],
                          sampling["guidance_scale"], sampling["seed"], device=diffusion["device"])
    image_grid([[hwc(x) for x in samples[r:r + 16]] for r in range(0, 64, 16)]
               ).save(Path(args.out) / "samples.png")
    figures = base_figures(samples, args.shards, args.backbone, cfg["backbones"]["weights"].get(args.backbone),
                           device=diffusion["device"])
    manifest = json.loads((Path(args.shards) / "manifest.json").read_text())
    views = manifest["splits"]["train"].get("views")
    tail = losses[-200:]
    sections = [
        ("# Demo base diffusion model (featinv embedded default)", (
            "The frozen base model under the embedded default's FeatInv ControlNets, as miniSD is under the "
            "paper's. Trained by the pipeline's own `train_base` rule; shipped here so that the main job "
            "only trains ControlNets on it. Loaded by `featinv.diffusion.base.load_base` "
            "(`diffusion.base.source` in params.yaml); float16 safetensors, computed in float32.")),
        ("Data", (
            f"The demo train split (`data/shards/{manifest['dataset']}`): {manifest['splits']['train']['count']} "
            f"square crops of {len(manifest['classes'])} real photographs that ship in the scikit-image, "
            f"scikit-learn, matplotlib and foolbox wheels, taken from the left {1 - cfg['data']['demo']['val_fraction']:.0%} "
            f"of each photo (val crops come from the right-hand strip, so no val pixels were seen), each as "
            f"{views['count'] if views else 1} cached views (view 0 the crop, the others random square crops of "
            f"{views['scale'] if views else '-'} of its area, flipped with p = 0.5): "
            f"{manifest['splits']['train']['count'] * (views['count'] if views else 1)} training images at "
            f"{base_cfg['resolution']} px.")),
        ("Model", json_block({
            "unet": "diffusers UNet2DConditionModel", "parameters": parameter_counts(args.out),
            "space": f"pixels folded by space-to-depth (patch {base_cfg['patch']}): "
                     f"{base_cfg['resolution']} px RGB = {base_cfg['resolution'] // base_cfg['patch']}^2 x {3 * base_cfg['patch'] ** 2}",
            **{k: base_cfg[k] for k in ("resolution", "patch", "block_out_channels", "layers_per_block",
                                        "attention_heads", "text_hidden", "text_layers", "prediction_type",
                                        "beta_schedule")},
            "text_encoder": "small CLIP text model frozen at its seeded initialisation (fixed prompt vs empty prompt)"})),
        ("Training", json_block({
            **base_cfg["train"], "wall_time_s": round(training.get("total_seconds", training["seconds"])), "resumed_from": training["resumed_from"],
            "loss_of_the_shipped_model_50_batches": objective,
            **({f"mean_logged_loss_last_{len(tail)}_steps": sum(tail) / len(tail)} if tail else {}),
            "logged_steps": len(losses),
            "device": "2-core CPU"}) + (f"\n\n{args.history}" if args.history else "")),
        ("Quality", (
            f"{figures['n_samples']} samples ({sampling['scheduler']}, {sampling['steps']} steps, guidance "
            f"{sampling['guidance_scale']}, seed {sampling['seed']}; `samples.png` shows the first 64), scored on "
            f"{figures['backbone']} at {figures['resolution']} px against the {figures['n_train_views']} training views "
            f"and the {figures['n_val_images']} held-out val crops:\n\n"
            "| images | FID vs train views (pooled features) | mean nearest-train cosine per position |\n|---|---|---|\n"
            f"| base-model samples | {figures['fid_samples_vs_train']:.1f} | {figures['nearest_train_cosine_samples']:.3f} |\n"
            f"| real val crops | {figures['fid_val_vs_train']:.1f} | {figures['nearest_train_cosine_val']:.3f} |\n\n"
            + json_block(figures))),
        ("Remake", (
            "```bash\n"
            "snakemake data/models/demo-base/base --cores all --configfile config/demo-base.yaml\n"
            f"featinv export-base --params params.yaml config/demo-base.yaml --model {args.model} "
            f"--loss-csv {args.loss_csv} --shards {args.shards} --targets {args.targets} --out {args.out}\n```\n"
            "Training is deterministic given the seeds on one machine type; CPU kernels differ across machines in "
            "the last bits, so a remade model matches in quality, not byte for byte.")),
    ]
    print(write_card(args.out, sections).read_text())


def cmd_train_controlnet(args) -> None:
    from featinv.diffusion.recipes import train_controlnet

    cfg = params.validate_sections(args.config, "diffusion", "controlnet")
    summary = train_controlnet(args.base, args.features, args.targets, args.variant, cfg["controlnet"],
                               cfg["diffusion"]["prompt"], args.out, args.loss_csv, device=cfg["diffusion"]["device"])
    print(json.dumps(summary, indent=1))


def cmd_sample(args) -> None:
    from featinv.diffusion.base import load_base
    from featinv.diffusion.controlnet import FeatureControlNet
    from featinv.diffusion.sample import control_strength, sample_store

    cfg = params.validate_sections(args.config, "diffusion", "sampling")
    sampling = cfg["sampling"]
    net = FeatureControlNet.from_pretrained(args.model)
    base = load_base(args.base, cfg["diffusion"]["base"]["resolution"])
    strength = control_strength(sampling, net.meta["backbone"])
    summary = sample_store(base, net, args.features, args.out, sampling, strength, cfg["diffusion"]["prompt"],
                           device=cfg["diffusion"]["device"])
    print(json.dumps(summary, indent=1))


def cmd_preview_samples(args) -> None:
    from featinv.diffusion.preview import preview_samples

    preview_samples(args.samples, args.shards, args.split, args.out, n=args.n)


def cmd_evaluate(args) -> None:
    from featinv.features.store import stores_by_backbone
    from featinv.metrics.evaluate import evaluate_samples

    cfg = params.validate_sections(args.config, "metrics", "backbones")
    result = evaluate_samples(args.samples, stores_by_backbone(args.stores), args.shards, cfg["metrics"],
                              cfg["backbones"]["weights"], per_image_csv=args.per_image, train_store=args.train_store)
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("cosine_sim", "match", "fid")}, indent=1))


def cmd_tables(args) -> None:
    from featinv.metrics.tables import write_tables

    cfg = params.validate_sections(args.config, "metrics", "data")
    metrics = [json.loads(Path(p).read_text()) for p in args.metrics]
    write_tables(metrics, args.out_dir, cfg["data"]["dataset"], cfg["metrics"]["cross_model_variant"], args.metrics_json)
    print((Path(args.out_dir) / "table1.md").read_text())
    print((Path(args.out_dir) / "table2.md").read_text())


def _modular_cfg(args, *extra: str) -> tuple[dict, str | None]:
    """The ``modular`` section (merged with ``extra`` sections' keys) and the forward model's weights file."""
    cfg = params.validate_sections(args.config, "modular", "backbones", *extra)
    modular = dict(cfg["modular"])
    for name in extra:
        modular.update(cfg[name])
    return modular, cfg["backbones"]["weights"].get(modular["backbone"])


def cmd_modular_train(args) -> None:
    from featinv.modular.trained import train_inverses

    modular, weights = _modular_cfg(args)
    print(json.dumps(train_inverses(modular, args.shards, args.model_dir, args.loss_csv, weights), indent=1))


ANALYSES = {
    "modular-mse": ("featinv.modular.analysis", "mse_by_stage",
                    "modular vs classic inversion: reconstruction MSE by stage, parameter counts, grid"),
    "modular-colour": ("featinv.modular.colour", "colour_analysis",
                       "colour perturbations: pairwise MSE of recoloured versions by stage, accuracy per filter"),
    "modular-noise": ("featinv.modular.noise", "token_noise", "token noise: reconstructions of manipulated tokens"),
    "modular-layers": ("featinv.modular.layers", "intermediate_layers",
                       "intermediate layers fed to the trained inverses"),
    "modular-finetune": ("featinv.modular.finetune", "finetune",
                         "forward model fine-tuned with a reconstruction loss (eq. 3), per lambda"),
}


def cmd_modular_analysis(args) -> None:
    import importlib

    from featinv.modular.trained import load_trained

    module, func, _ = ANALYSES[args.verb]
    modular, weights = _modular_cfg(args, "modular_analyses")
    trained = load_trained(modular, args.model_dir, weights)
    result = getattr(importlib.import_module(module), func)(trained, modular, args.shards, args.out_dir)
    print(json.dumps(result, indent=1, default=str))


def _figure_setup(args, scorer: bool = True):
    from featinv.applications.figures import FeatInvGenerator, MapScorer

    cfg = params.validate_sections(args.config, "diffusion", "sampling", "applications", "backbones")
    gen = FeatInvGenerator(args.base, args.model, cfg["diffusion"], cfg["sampling"])
    name = gen.net.meta["backbone"]
    score = MapScorer(name, cfg["backbones"]["weights"].get(name), gen.device) if scorer else None
    return cfg["applications"], gen, score


def cmd_figure(args) -> None:
    from featinv.applications import figures

    apps, gen, score = _figure_setup(args, scorer=args.verb != "figure-concepts")
    if args.verb == "figure-concepts":
        figures.concepts_figure(gen, args.train_store, args.store, args.shards, args.split, apps["concepts"],
                                args.out_png, args.out_csv)
    elif args.verb == "figure-interpolation":
        figures.interpolation_figure(gen, score, args.store, args.shards, args.split, apps["interpolation"],
                                     args.out_png, args.out_csv)
    elif args.verb == "figure-composition":
        figures.composition_figure(gen, score, args.store, args.shards, args.split, apps["composition"],
                                   args.out_png, args.out_csv)
    else:
        q = apps["qualitative"]
        stores = dict(item.split("=", 1) for item in args.samples)
        per_image = dict(item.split("=", 1) for item in args.per_image)
        figures.qualitative_figure(stores, per_image, args.shards, args.split, q, args.out_png, args.out_csv)
        figures.variability_figure(gen, score, args.store, args.shards, args.split, q, args.variability_png,
                                   args.variability_csv)
    print(Path(args.out_csv).read_text())


def cmd_plot_losses(args) -> None:
    from featinv.plots import plot_losses

    plot_losses(args.csv, args.out)


def cmd_bench_diffusion(args) -> None:
    from featinv.diffusion.bench import bench

    bench(args.device, args.scale, steps=args.steps, batch_size=args.batch_size, train_steps=args.train_steps)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featinv", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--processes", type=int, default=1,
                        help="run as N processes under `accelerate launch` (one per GPU; gloo on CPU): extract, "
                             "train-base, train-controlnet and sample split their work; 0 or 1 = one process")
    sub = parser.add_subparsers(dest="verb", required=True)

    def verb(name, func, help_text, sections=()):
        p = sub.add_parser(name, help=help_text)
        if sections:
            p.add_argument("--config", type=_json_arg, required=True,
                           help=f"params sections {', '.join(sections)} as one JSON object")
        p.set_defaults(func=func)
        return p

    p = verb("validate", cmd_validate, "validate params files (later files overlay earlier ones)")
    p.add_argument("params", nargs="+")

    p = verb("build-shards", cmd_build_shards, "write a dataset source into webdataset shards + manifest", ["data"])
    p.add_argument("--out", required=True, help="shard directory, e.g. data/shards/demo")

    p = verb("extract", cmd_extract, "extract a split's feature maps into a zarr store", ["features"])
    p.add_argument("--backbone", required=True, help="timm model name")
    p.add_argument("--weights", default="", help="local weights file (optional)")
    p.add_argument("--shards", required=True, help="shard directory with manifest.json")
    p.add_argument("--split", required=True)
    p.add_argument("--store", required=True, help="output zarr store, e.g. data/features/demo/<bb>/val.zarr")
    p.add_argument("--report", default="", help="accuracy/throughput JSON to write")

    p = verb("bench-extract", cmd_bench_extract, "print extraction throughput, peak memory and bytes per image")
    p.add_argument("--backbone", required=True)
    p.add_argument("--shards", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="use only the first N images (0 = all)")

    p = verb("encode-targets", cmd_encode_targets, "cache a split's diffusion targets (encoded images)", ["diffusion"])
    p.add_argument("--shards", required=True)
    p.add_argument("--split", required=True)
    p.add_argument("--out", required=True)

    p = verb("train-base", cmd_train_base, "train the embedded base diffusion model", ["diffusion"])
    p.add_argument("--targets", required=True, help="cached targets of the train split")
    p.add_argument("--out", required=True, help="output directory (diffusers layout)")
    p.add_argument("--loss-csv", required=True)

    p = verb("preview-base", cmd_preview_base, "a grid of base-model samples under training images",
             ["diffusion", "sampling"])
    p.add_argument("--base", required=True)
    p.add_argument("--targets", required=True)
    p.add_argument("--out", required=True, help="PNG")

    p = verb("export-base", cmd_export_base, "ship a trained embedded base model: float16 weights and a model card")
    p.add_argument("--params", nargs="+", required=True, help="params.yaml and the overlay it was trained under")
    p.add_argument("--model", required=True, help="the trained base model (rule train_base)")
    p.add_argument("--loss-csv", required=True)
    p.add_argument("--shards", required=True, help="the shards it was trained on")
    p.add_argument("--targets", required=True, help="the cached targets it was trained on")
    p.add_argument("--out", required=True, help="directory to ship (replaced)")
    p.add_argument("--n", type=int, default=256, help="samples for the model card's figures")
    p.add_argument("--history", default="", help="how the training run went (interruptions, resumes), for the card")
    p.add_argument("--backbone", default="tf_efficientnet_lite0", help="backbone of the card's figures")

    p = verb("train-controlnet", cmd_train_controlnet, "train one FeatInv ControlNet", ["diffusion", "controlnet"])
    p.add_argument("--base", required=True, help="base model directory or hub id")
    p.add_argument("--features", required=True, help="feature store of the train split")
    p.add_argument("--targets", required=True, help="cached targets of the train split")
    p.add_argument("--variant", required=True, help="unpooled (the spatial map) or pooled (the baseline)")
    p.add_argument("--out", required=True)
    p.add_argument("--loss-csv", required=True)

    p = verb("sample", cmd_sample, "reconstruct a feature store's maps with a trained ControlNet",
             ["diffusion", "sampling"])
    p.add_argument("--model", required=True, help="trained ControlNet directory")
    p.add_argument("--base", required=True, help="base model directory or hub id")
    p.add_argument("--features", required=True, help="feature store of the sampling split")
    p.add_argument("--out", required=True, help="output sample store (zarr)")

    p = verb("preview-samples", cmd_preview_samples, "a grid of originals above their reconstructions")
    p.add_argument("--samples", required=True, help="sample store (zarr)")
    p.add_argument("--shards", required=True, help="shards holding the originals")
    p.add_argument("--split", required=True)
    p.add_argument("--n", type=int, default=8, help="feature maps shown (evenly spaced over the store)")
    p.add_argument("--out", required=True, help="PNG")

    p = verb("evaluate", cmd_evaluate, "cosine-sim, top-k match and FID of one model's reconstructions",
             ["metrics", "backbones"])
    p.add_argument("--samples", required=True, help="sample store (zarr)")
    p.add_argument("--stores", nargs="+", required=True,
                   help="feature stores of the originals, one per evaluating backbone (the conditioning one first)")
    p.add_argument("--shards", required=True, help="shards holding the originals (for FID and the oracles)")
    p.add_argument("--train-store", help="the conditioning backbone's train feature store (nearest-train oracle)")
    p.add_argument("--out", required=True, help="metrics JSON")
    p.add_argument("--per-image", default="", help="per-image CSV (conditioning backbone)")

    p = verb("tables", cmd_tables, "assemble Table 1, Table 2 and the DVC metrics file", ["metrics", "data"])
    p.add_argument("--metrics", nargs="+", required=True, help="metrics JSONs written by `featinv evaluate`")
    p.add_argument("--out-dir", required=True, help="directory for table1/table2 .csv and .md")
    p.add_argument("--metrics-json", required=True, help="summary for `dvc metrics show`")

    p = verb("modular-train", cmd_modular_train, "train modular and classic inverses of every stage",
             ["modular", "backbones"])
    p.add_argument("--shards", required=True)
    p.add_argument("--model-dir", required=True, help="directory for inverses.safetensors and meta.json")
    p.add_argument("--loss-csv", required=True)
    for name, (_, _, help_text) in ANALYSES.items():
        p = verb(name, cmd_modular_analysis, help_text, ["modular", "modular_analyses", "backbones"])
        p.add_argument("--shards", required=True)
        p.add_argument("--model-dir", required=True, help="where modular-train saved the inverses")
        p.add_argument("--out-dir", required=True, help="directory for the tables and figures")

    figure_verbs = {
        "figure-concepts": "FeatInv-Viz: MCD concepts of one class steered in input space (Fig 4)",
        "figure-interpolation": "reconstructions of interpolated feature maps (Fig 5)",
        "figure-composition": "reconstructions of spatially composed feature maps (Fig 6)",
        "figure-qualitative": "every trained model's reconstructions side by side, and samples per map (Fig 3)",
    }
    for name, help_text in figure_verbs.items():
        p = verb(name, cmd_figure, help_text, ["diffusion", "sampling", "applications", "backbones"])
        p.add_argument("--base", required=True, help="base model directory or hub id")
        p.add_argument("--model", required=True, help="the unpooled FeatInv ControlNet that reconstructs")
        p.add_argument("--store", required=True, help="feature store of the split the maps come from")
        p.add_argument("--shards", required=True)
        p.add_argument("--split", required=True)
        p.add_argument("--out-png", required=True)
        p.add_argument("--out-csv", required=True)
        if name == "figure-concepts":
            p.add_argument("--train-store", required=True, help="feature store the concepts are discovered in")
        if name == "figure-qualitative":
            p.add_argument("--samples", nargs="+", required=True, help="MODEL=sample store, one per trained model")
            p.add_argument("--per-image", nargs="+", required=True, help="MODEL=per-image metrics CSV")
            p.add_argument("--variability-png", required=True)
            p.add_argument("--variability-csv", required=True)

    p = verb("plot-losses", cmd_plot_losses, "training-loss curves of the base model and the ControlNets")
    p.add_argument("--csv", nargs="+", required=True, help="loss CSVs (step,loss,...)")
    p.add_argument("--out", required=True, help="PNG")

    p = verb("bench-diffusion", cmd_bench_diffusion, "print training and sampling throughput")
    p.add_argument("--device", default="auto")
    p.add_argument("--scale", choices=["demo", "paper", "both"], default="both")
    p.add_argument("--steps", type=int, default=0, help="sampling steps (0 = 20 demo / 50 paper)")
    p.add_argument("--batch-size", type=int, default=0, help="sampling batch (0 = automatic)")
    p.add_argument("--train-steps", type=int, default=5)
    return parser


MULTI_PROCESS_VERBS = ("extract", "train-base", "train-controlnet", "sample")


def _relaunch(args, argv: list[str]) -> int:
    """Rerun this command as ``args.processes`` processes (without ``--processes``)."""
    import subprocess

    from featinv.distributed import launch_command

    if args.verb not in MULTI_PROCESS_VERBS:
        print(f"featinv {args.verb}: error: --processes {args.processes}: only {', '.join(MULTI_PROCESS_VERBS)} "
              "split their work across processes", file=sys.stderr)
        return 2
    # global options precede the verb: keep them, without --processes
    rest = (["-v"] if args.verbose else []) + ["--threads", str(args.threads)] + argv[argv.index(args.verb):]
    return subprocess.call(launch_command(args.processes, rest))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    from featinv.distributed import launched

    if args.processes > 1 and not launched():
        return _relaunch(args, argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from featinv.allocator import keep_freed_memory

    logging.getLogger(__name__).debug("allocator: %s", keep_freed_memory())
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        args.func(args)
    except (params.ParamsError, FileNotFoundError, ValueError, KeyError) as exc:
        print(f"featinv {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
