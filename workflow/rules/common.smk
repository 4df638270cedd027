# Shared helpers: params validation, wildcard constraints and the paths every rule refers to.
#
# Staleness: a job reruns when an input is newer than its outputs, or when its params (the sections
# its verb reads, `cfg`) or its code (the source its verb runs, `code`) changed, and then so does
# every job downstream of it, in the same invocation: no input is ancient(). After `dvc pull` /
# `dvc checkout` (fresh mtimes, no .snakemake metadata) `featinv sync` marks the restored outputs up
# to date, once DVC has confirmed they are. Every job records its provenance in its outputs (`stamp`), which
# the tables and figures check before they read a metrics file.
import json
import os
import shlex
import sys
from importlib.metadata import version
from pathlib import Path

from featinv.sourceid import LAST, backbone_name, source_id
from featinv.cli import VERBS
from featinv.codedeps import rule_code_hash
from featinv.fileio import write_json
from featinv.config import forward_family, modular_run_name, narrow, validate
from featinv.provenance import params_hash

# Stop before any job when params (with any --configfile overlay) break the schema.
validate(config, schema_path=workflow.source_path("../schemas/params.schema.yaml"), source="config")
# An overlay that lists fewer backbones.names (one GPU's worth of the paper run) leaves the settings of
# the others aside, each with a note.
_narrowed, _notes = narrow(config)
config.update(_narrowed)
for _note in _notes:
    print(f"note: {_note}", file=sys.stderr)

DATASET = config["data"]["dataset"]
RESOURCES = config["resources"]
BACKBONES = config["backbones"]["names"]


def layers_of(name):
    """The layers of backbone ``name`` that params name (features.layer; default the last map)."""
    layers = config["features"]["layer"].get(name, [LAST])
    return [layers] if isinstance(layers, str) else list(layers)


def known_layers(name):
    """The valid layer names of timm model ``name``, cached per timm version in
    .snakemake/featinv-layers.json: building the model (and importing torch) costs ~5 s, which every
    Snakemake invocation (one per DVC stage) would otherwise pay before planning."""
    path = Path(".snakemake") / "featinv-layers.json"
    key = f"{name} timm=={version('timm')}"
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        from featinv.backbones.layers import valid_layers

        cache[key] = valid_layers(name)
        write_json(path, cache)
    return cache[key]


def check_layers():
    """Stop before any job when a named layer does not exist, listing the valid ones (models are built
    with random weights, only for backbones with a layer other than the last)."""
    wanted = {name: set(layers_of(name)) for name in BACKBONES}
    study = config["layers"]
    if study["backbone"]:
        if study["layer"] == LAST:
            raise ValueError("params layers.layer: an intermediate layer, not last (the study sets it beside the last)")
        wanted[study["backbone"]].add(study["layer"])
    for name, layers in wanted.items():
        if layers - {LAST}:
            valid = known_layers(name)
            bad = sorted(layers - set(valid))
            if bad:
                raise ValueError(f"params: backbone '{name}' has no layer {', '.join(repr(b) for b in bad)}; "
                                 f"valid layers: {', '.join(valid)}")


check_layers()
# A source is a (backbone, layer) pair: the backbone's name for its last map, name@layer for another.
SOURCES = [source_id(name, layer) for name in BACKBONES for layer in layers_of(name)]

wildcard_constraints:
    backbone=r"[A-Za-z0-9_.\-]+(@[A-Za-z0-9_.]+)?",
    split=r"[A-Za-z0-9_]+",
    variant=r"unpooled|pooled|inverse",  # inverse: the deterministic inverse's reconstructions (rule invert)


def verb_params(rule):
    """The params every rule passes its `featinv` verb: `cfg`, the params sections the verb declares
    as the JSON its --config takes; `stamp`, the job's provenance as the JSON `featinv --stamp` takes
    (rule, params hash, code hash, input and output files); and the two values whose change reruns the
    job and everything downstream: `result` (the hash of what decides its outputs: the sections
    without their execution keys, `featinv.config.execution_keys`) and `code` (the hash of the source
    its verb runs, comments and docstrings aside). Snakemake's params trigger ignores params computed
    from a job's files (`cfg` and `stamp` are, so an execution key such as features.num_workers reaches
    the verb and reruns nothing); it reruns a job when a plain param (`result`, `code`) changes."""
    sections = VERBS[rule].sections
    result, code = params_hash({name: config[name] for name in sections}), rule_code_hash(rule)
    text = json.dumps({name: config[name] for name in sections}, sort_keys=True)

    def job_stamp(wildcards, input, output):
        return json.dumps({"rule": rule, "params": result, "code": code, "inputs": [str(p) for p in input],
                           "outputs": [str(p) for p in output]}, sort_keys=True)

    return {"stamp": job_stamp, "result": result, "code": code, "cfg": lambda wildcards, input: text}


def record_in_dvc():
    """On success (the Snakefile's onsuccess): record what this invocation built in dvc.lock, so that
    `dvc status` and `snakemake -n` agree. Not inside `dvc repro` (DVC records its own stages), not
    without a DVC repository, and not under --configfile overlays (dvc.yaml's params are
    params.yaml's)."""
    from featinv.restore import commit

    if os.environ.get("DVC_STAGE") or not (os.path.isdir(".dvc") and os.path.exists("dvc.yaml")):
        return
    if workflow.overwrite_configfiles:
        print("note: built under --configfile overlays: not recorded in dvc.lock (its params are params.yaml's)")
        return
    jobs = workflow.dag.targetjobs
    targets = sorted({str(f) for job in jobs for f in (job.output or job.input)})
    if targets:
        commit(targets)


def weights_arg(wildcards):
    """`--weights FILE` where params name a local weights file for this backbone, else nothing."""
    path = config["backbones"]["weights"].get(backbone_name(wildcards.backbone))
    return f"--weights {shlex.quote(path)}" if path else ""


def job_resources(rule, gpu=None):
    """Cluster resources of one job of ``rule``: memory (MB) and runtime (minutes) from params
    (``resources``, per rule or default) and its GPUs: ``gpu="all"`` for rules that split their work
    across processes (``resources.gpus``: one process per GPU), ``"one"`` for rules that use one GPU
    if there is any. Outputs never depend on these, so changing them reruns nothing."""
    res = {key: RESOURCES[key].get(rule, RESOURCES[key]["default"]) for key in ("mem_mb", "runtime")}
    if gpu == "all":
        res["gpu"] = RESOURCES["gpus"]
    elif gpu == "one":
        res["gpu"] = min(RESOURCES["gpus"], 1)
    elif gpu is not None:
        raise ValueError(f"rule {rule}: gpu must be 'all', 'one' or None, not {gpu!r}")
    return res


def check_resource_rules(names):
    """Per-rule entries in params `resources` must name rules of this workflow (under these params
    or others: modular_detection exists for DETR, modular_attention for ViTs)."""
    for key in ("mem_mb", "runtime"):
        unknown = sorted(set(RESOURCES[key]) - {"default"} - set(names))
        if unknown:
            raise ValueError(f"params resources.{key}: no rule named {', '.join(unknown)} "
                             f"(rules: {', '.join(sorted(names))})")


# Every artifact path, written once; rules and targets refer to these.
SHARDS = f"data/shards/{DATASET}"
STORE = f"data/features/{DATASET}/{{backbone}}/{{split}}.zarr"
BACKBONE_REPORT = f"results/backbones/{DATASET}/{{backbone}}-{{split}}.json"
TARGETS = f"data/targets/{DATASET}/{{split}}.zarr"
TRAINED_BASE = f"data/models/{DATASET}/base"
CONTROLNET = f"data/models/{DATASET}/controlnet/{{backbone}}-{{variant}}"
SAMPLES = f"data/samples/{DATASET}/{{backbone}}-{{variant}}/{{split}}.zarr"
ORIGINALS = f"data/originals/{DATASET}/{{backbone}}/{{split}}.zarr"  # the originals scored once per source
METRICS = f"results/metrics/{DATASET}/{{backbone}}-{{variant}}-{{split}}.json"
PER_IMAGE = f"results/metrics/{DATASET}/{{backbone}}-{{variant}}-{{split}}-per-image.csv"
TUNING = f"results/tuning/{DATASET}/{{backbone}}-{{variant}}.csv"
TABLE1 = "results/table1.csv"
# modular inversion: one directory per forward model (COCO serves ViT and DETR)
MODULAR_RUN = modular_run_name(config["modular"]["backbone"])
MODULAR = f"results/modular/{DATASET}/{MODULAR_RUN}"

VARIANTS = config["controlnet"]["variants"]
SAMPLING_SPLIT = config["sampling"]["split"]
CROSS_VARIANT = config["metrics"]["cross_model_variant"]
BASE_TRAINED_HERE = config["diffusion"]["base"]["source"] == "train"
# The base model: trained by rule train_base, or a hub id / local directory given in params.
BASE = TRAINED_BASE if BASE_TRAINED_HERE else config["diffusion"]["base"]["source"]


def feature_stores():
    return expand(STORE, backbone=SOURCES, split=config["features"]["splits"])


def backbone_reports():
    return expand(BACKBONE_REPORT, backbone=SOURCES, split=config["features"]["splits"])


def base_input(wildcards):
    """The base model as a rule input: the one this pipeline trains, or a local directory's weights and
    configs (the shipped models/demo-base, a downloaded miniSD), not its documentation (the model card
    and its figures: *.md, *.png), so that editing the card reruns nothing; a hub id names no file."""
    if BASE_TRAINED_HERE:
        return [TRAINED_BASE]
    if not os.path.isdir(BASE):
        return []
    return sorted(os.path.join(BASE, name) for name in os.listdir(BASE)
                  if not name.endswith((".md", ".png")) and not name.startswith("."))


def codec_input(wildcards):
    """What the diffusion targets are encoded with: a pretrained base's VAE (`vae/`) or the shipped
    base's codec (`codec.json`), not its UNet or text encoder; nothing for a base trained here (its
    pixel space) or named by hub id."""
    if BASE_TRAINED_HERE:
        return []
    return [p for p in base_input(wildcards) if os.path.basename(p) in ("vae", "codec.json")]


def sample_stores():
    return expand(SAMPLES, backbone=SOURCES, variant=VARIANTS, split=SAMPLING_SPLIT)


# The helpers below refer to the rules' own outputs (`rules.X.output`), so each path is written once,
# in its rule; they run after the rule files are included.
def sample_previews():
    return expand(rules.preview_samples.output.grid, backbone=SOURCES, variant=VARIANTS, split=SAMPLING_SPLIT)


def base_previews():
    return [rules.preview_base.output.grid]


def metric_files():
    return expand(METRICS, backbone=SOURCES, variant=VARIANTS, split=SAMPLING_SPLIT)


def loss_csvs():
    """Training-loss CSVs of every model this pipeline trains."""
    base = [rules.train_base.output.loss] if BASE_TRAINED_HERE else []
    return base + expand(rules.train_controlnet.output.loss, backbone=SOURCES, variant=VARIANTS)
