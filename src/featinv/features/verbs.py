"""Verbs of the feature-extraction stage."""

from __future__ import annotations

import json

from featinv.verbs import Arg, verb


@verb("extract a split's feature maps into a zarr store", sections=("features", "backbones"), processes=True, args=(
    Arg("--backbone", "timm model name, @layer for an intermediate layer (features.layer)", required=True),
    Arg("--weights", "local weights file (optional)", default=""),
    Arg("--shards", "shard directory with manifest.json", required=True),
    Arg("--split", required=True),
    Arg("--store", "output zarr store, e.g. data/features/demo/<bb>/val.zarr", required=True),
    Arg("--report", "accuracy/throughput JSON to write", default="")))
def extract_features(args, cfg) -> None:
    from featinv.backbones import create_backbone
    from featinv.features.extract import accuracy_report, extract
    from featinv.fileio import write_json

    from featinv.sourceid import backbone_name

    feats = cfg.features
    backbone = create_backbone(args.backbone, weights=args.weights or None,
                               input_size=cfg.backbones.input_size.get(backbone_name(args.backbone)))
    summary = extract(backbone, args.shards, args.split, args.store, batch_size=feats.batch_size,
                      num_workers=feats.num_workers, device=feats.device, rows_per_shard=feats.rows_per_shard,
                      rows_per_chunk=feats.rows_per_chunk, topk=feats.topk, view=feats.view)
    if summary["process"]:
        return  # the main process reports, once the store is complete
    report = {**accuracy_report(args.store), "extraction": summary}
    if args.report:
        write_json(args.report, report)
    print(json.dumps(report, indent=1))


@verb("print extraction throughput, peak memory and bytes per image", args=(
    Arg("--backbone", required=True),
    Arg("--shards", required=True),
    Arg("--split", default="train"),
    Arg("--batch-size", type=int, default=32),
    Arg("--device", default="auto"),
    Arg("--num-workers", type=int, default=2),
    Arg("--limit", "use only the first N images (0 = all)", type=int, default=0)))
def bench_extract(args, cfg) -> None:
    from featinv.features.bench import bench_extract as bench

    bench(args.backbone, args.shards, args.split, batch_size=args.batch_size, device=args.device,
          num_workers=args.num_workers, limit=args.limit)
