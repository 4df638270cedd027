"""Verbs of the metrics stage: per-model scores, the tables, the loss curves."""

from __future__ import annotations

import json
from pathlib import Path

from featinv.verbs import Arg, verb


@verb("the originals through one evaluating source, once for every model: the copy oracle, FID's real side",
      sections=("metrics", "backbones", "diffusion"), args=(
          Arg("--store", "the source's feature store of the originals", required=True),
          Arg("--shards", "shards holding the originals", required=True),
          Arg("--out", "originals' scores (zarr)", required=True)))
def score_originals(args, cfg) -> None:
    from featinv.metrics.evaluate import score_originals as score

    score(args.store, args.shards, cfg.metrics, cfg.diffusion.base.resolution, args.out, cfg.backbones.weights)


@verb("cosine-sim, top-k match and FID of one model's reconstructions", sections=("metrics", "backbones"), args=(
    Arg("--samples", "sample store (zarr)", required=True),
    Arg("--stores", "feature stores of the originals, one per evaluating backbone (the conditioning one first)",
        required=True, nargs="+"),
    Arg("--originals", "the originals' scores (`featinv score-originals`), one per evaluating backbone",
        required=True, nargs="+"),
    Arg("--shards", "shards holding the originals (for FID and the oracles)", required=True),
    Arg("--train-store", "the conditioning backbone's train feature store (nearest-train oracle)"),
    Arg("--out", "metrics JSON", required=True),
    Arg("--per-image", "per-image CSV (conditioning backbone)", default="")))
def evaluate(args, cfg) -> None:
    from featinv.features.store import stores_by_backbone
    from featinv.fileio import write_json
    from featinv.metrics.evaluate import evaluate_samples

    result = evaluate_samples(args.samples, stores_by_backbone(args.stores), stores_by_backbone(args.originals),
                              args.shards, cfg.metrics, cfg.backbones.weights, per_image_csv=args.per_image,
                              train_store=args.train_store)
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("cosine_sim", "match", "fid")}, indent=1))


@verb("assemble Table 1, Table 2 and the DVC metrics file", sections=("metrics", "data"), args=(
    Arg("--metrics", "metrics JSONs written by `featinv evaluate`", required=True, nargs="+"),
    Arg("--out-dir", "directory for table1/table2 .csv and .md", required=True),
    Arg("--metrics-json", "summary for `dvc metrics show`", required=True)))
def tables(args, cfg) -> None:
    from featinv.metrics.stats import bootstrap_of
    from featinv.metrics.tables import write_tables
    from featinv.provenance import check_or_warn

    check_or_warn(args.metrics, target=str(Path(args.out_dir) / "table1.csv"))
    metrics = [json.loads(Path(p).read_text()) for p in args.metrics]
    boot = bootstrap_of(cfg.metrics)
    write_tables(metrics, args.out_dir, cfg.data.dataset, cfg.metrics.cross_model_variant, args.metrics_json, boot)
    print((Path(args.out_dir) / "table1.md").read_text())
    print((Path(args.out_dir) / "table2.md").read_text())


@verb("FeatInv beside the deterministic inverse of the same map: table and figure", sections=("data", "sampling"), args=(
    Arg("--metrics", "metrics JSONs of one source's models (unpooled, pooled, inverse)", required=True, nargs="+"),
    Arg("--samples", "their sample stores", required=True, nargs="+"),
    Arg("--shards", "shards holding the originals", required=True),
    Arg("--out-csv", required=True), Arg("--out-md", required=True), Arg("--out-png", required=True)))
def compare(args, cfg) -> None:
    from featinv.metrics.comparison import write_comparison
    from featinv.provenance import check_or_warn

    check_or_warn(args.metrics, target=args.out_csv)
    metrics = [json.loads(Path(p).read_text()) for p in args.metrics]
    write_comparison(metrics, args.samples, args.shards, cfg.data.dataset, args.out_csv, args.out_md, args.out_png,
                     n=cfg.sampling.preview)
    print(Path(args.out_md).read_text())


@verb("one backbone's FeatInv from its last map and from an intermediate layer: table and figure",
      sections=("layers",), args=(
          Arg("--metrics", "metrics JSONs of the backbone's unpooled models (last and intermediate)", required=True,
              nargs="+"),
          Arg("--samples", "their sample stores", required=True, nargs="+"),
          Arg("--shards", "shards holding the originals", required=True),
          Arg("--out-csv", required=True), Arg("--out-png", required=True)))
def layer_study(args, cfg) -> None:
    from featinv.metrics.comparison import write_layer_study
    from featinv.provenance import check_or_warn

    check_or_warn(args.metrics, target=args.out_csv)
    metrics = [json.loads(Path(p).read_text()) for p in args.metrics]
    write_layer_study(metrics, args.samples, args.shards, args.out_csv, args.out_png, n=cfg.layers.preview)
    print(Path(args.out_csv).read_text())


@verb("training-loss curves of the base model and the ControlNets", args=(
    Arg("--csv", "loss CSVs (step,loss,...)", required=True, nargs="+"),
    Arg("--out", "PNG", required=True)))
def plot_losses(args, cfg) -> None:
    from featinv.plots import plot_losses as plot

    plot(args.csv, args.out)
