"""Verbs of the data stage."""

from __future__ import annotations

from pathlib import Path

from featinv.verbs import Arg, verb


@verb("write a dataset source into webdataset shards + manifest", sections=("data",),
      args=(Arg("--out", "shard directory, e.g. data/shards/demo", required=True),))
def build_shards(args, cfg) -> None:
    from featinv.data.shards import build
    from featinv.data.sources import make_source

    data = cfg.data
    manifest = build(make_source(data), args.out, data.dataset, data.splits, data.per_class, data.shard_maxcount,
                     data.views, threads=max(1, args.threads))
    for split, entry in manifest["splits"].items():
        print(f"{split}: {entry['count']} images in {len(entry['shards'])} shards")
    print(f"rejected: {manifest['rejected']} (see {Path(args.out) / 'rejected.tsv'})")
