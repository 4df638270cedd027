"""``featinv <verb>``: the one entry point every Snakemake rule calls, usable by hand with the same
arguments. Params sections arrive as JSON (``--config``) and are validated against the schema."""

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

    data = params.validate_section("data", args.config)
    manifest = build(make_source(data), args.out, data["dataset"], data["splits"], data["per_class"],
                     data["shard_maxcount"])
    for split, entry in manifest["splits"].items():
        print(f"{split}: {entry['count']} images in {len(entry['shards'])} shards")
    print(f"rejected: {manifest['rejected']} (see {Path(args.out) / 'rejected.tsv'})")


def cmd_extract(args) -> None:
    from featinv.backbones import create_backbone
    from featinv.features.extract import accuracy_report, extract

    feats = params.validate_section("features", args.config)
    backbone = create_backbone(args.backbone, weights=args.weights or None)
    summary = extract(backbone, args.shards, args.split, args.store, batch_size=feats["batch_size"],
                      num_workers=feats["num_workers"], device=feats["device"],
                      rows_per_shard=feats["rows_per_shard"], rows_per_chunk=feats["rows_per_chunk"],
                      topk=feats["topk"])
    report = {**accuracy_report(args.store), "extraction": summary}
    if args.report:
        write_json(args.report, report)
    print(json.dumps(report, indent=1))


def cmd_bench_extract(args) -> None:
    from featinv.features.bench import bench_extract

    bench_extract(args.backbone, args.shards, args.split, batch_size=args.batch_size, device=args.device,
                  num_workers=args.num_workers, limit=args.limit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featinv", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("validate", help="validate params files (later files overlay earlier ones)")
    p.add_argument("params", nargs="+")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("build-shards", help="write a dataset source into webdataset shards + manifest")
    p.add_argument("--config", type=_json_arg, required=True, help="the params 'data' section as JSON")
    p.add_argument("--out", required=True, help="shard directory, e.g. data/shards/demo")
    p.set_defaults(func=cmd_build_shards)

    p = sub.add_parser("extract", help="extract a split's feature maps into a zarr store")
    p.add_argument("--backbone", required=True, help="timm model name")
    p.add_argument("--weights", default="", help="local weights file (optional)")
    p.add_argument("--shards", required=True, help="shard directory with manifest.json")
    p.add_argument("--split", required=True)
    p.add_argument("--store", required=True, help="output zarr store, e.g. data/features/demo/<bb>/val.zarr")
    p.add_argument("--report", default="", help="accuracy/throughput JSON to write")
    p.add_argument("--config", type=_json_arg, required=True, help="the params 'features' section as JSON")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("bench-extract", help="print extraction throughput, peak memory and bytes per image")
    p.add_argument("--backbone", required=True)
    p.add_argument("--shards", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="use only the first N images (0 = all)")
    p.set_defaults(func=cmd_bench_extract)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
