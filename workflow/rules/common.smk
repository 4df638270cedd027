# Shared helpers: params validation, wildcard constraints and the paths every rule refers to.
import json
import shlex

from featinv.config import validate

# Stop before any job when params (with any --configfile overlay) break the schema.
validate(config, schema_path=workflow.source_path("../schemas/params.schema.yaml"), source="config")

DATASET = config["data"]["dataset"]
BACKBONES = config["backbones"]["names"]

wildcard_constraints:
    backbone=r"[A-Za-z0-9_.\-]+",
    split=r"[A-Za-z0-9_]+",


def section_json(name):
    """A params section as the JSON string its CLI verb takes (--config); a function, so that
    Snakemake does not read the JSON braces as wildcards."""
    text = json.dumps(config[name], sort_keys=True)
    return lambda wildcards: text


def weights_arg(wildcards):
    """`--weights FILE` where params name a local weights file for this backbone, else nothing."""
    path = config["backbones"]["weights"].get(wildcards.backbone)
    return f"--weights {shlex.quote(path)}" if path else ""


# Every artifact path, written once; rules and targets refer to these.
SHARDS = f"data/shards/{DATASET}"
STORE = f"data/features/{DATASET}/{{backbone}}/{{split}}.zarr"
BACKBONE_REPORT = f"results/backbones/{DATASET}/{{backbone}}-{{split}}.json"


def feature_stores():
    return expand(STORE, backbone=BACKBONES, split=config["features"]["splits"])


def backbone_reports():
    return expand(BACKBONE_REPORT, backbone=BACKBONES, split=config["features"]["splits"])
