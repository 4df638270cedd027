"""params.yaml: loading, overlays and validation against the JSON schema.

The schema lives in ``workflow/schemas/params.schema.yaml``; the Snakefile validates the merged
config with :func:`validate` before any job runs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import yaml
from jsonschema import Draft202012Validator

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "params.schema.yaml"


class ParamsError(ValueError):
    """A params file is invalid; the message names every offending key path."""


def _key_path(path) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def _describe(error) -> str:
    """One line per schema error, naming the key path and what is wrong."""
    where = list(error.absolute_path)
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(known))
        return "; ".join(
            f"{_key_path(where + [k])}: unknown key (allowed here: {', '.join(known)})" for k in extra
        )
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return f"{_key_path(where + [missing])}: missing required key"
    return f"{_key_path(where)}: {error.message}"


def validate(config: Mapping[str, Any], schema_path: Path = SCHEMA_PATH, source: str = "params") -> None:
    """Raise :class:`ParamsError` listing every schema violation and cross-key inconsistency."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = Draft202012Validator(schema)
    problems = [_describe(e) for e in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))]
    if not problems:
        problems = _cross_checks(config)
    if problems:
        raise ParamsError(f"invalid {source}:\n  " + "\n  ".join(problems))


def validate_section(name: str, value: Any, schema_path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """Validate one top-level section (as a CLI verb receives it) against its part of the schema."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    if name not in schema["properties"]:
        raise ParamsError(f"unknown params section '{name}'")
    validator = Draft202012Validator({**schema["properties"][name], "$defs": schema.get("$defs", {})})
    problems = [_describe(e) for e in validator.iter_errors(value)]
    if problems:
        raise ParamsError(f"invalid {name} section:\n  " + "\n  ".join(f"{name}.{p}" for p in problems))
    return dict(value)


def validate_sections(value: Any, *names: str) -> dict[str, Any]:
    """Validate the params sections a CLI verb takes (a JSON object keyed by section name)."""
    if not isinstance(value, dict):
        raise ParamsError(f"--config must be a JSON object of params sections {list(names)}")
    missing = [n for n in names if n not in value]
    if missing:
        raise ParamsError(f"--config lacks the params section(s) {missing}")
    return {n: validate_section(n, value[n]) for n in names}


def _cross_checks(config: Mapping[str, Any]) -> list[str]:
    """Constraints between keys that JSON schema cannot express."""
    problems = []
    splits = config["data"]["splits"]
    for split in config["data"]["per_class"]:
        if split not in splits:
            problems.append(f"data.per_class.{split}: not one of data.splits {splits}")
    for split in config["features"]["splits"]:
        if split not in splits:
            problems.append(f"features.splits: '{split}' is not one of data.splits {splits}")
    feats = config["features"]
    if feats["rows_per_shard"] % feats["rows_per_chunk"]:
        problems.append(
            f"features.rows_per_chunk: {feats['rows_per_chunk']} must divide "
            f"features.rows_per_shard ({feats['rows_per_shard']})"
        )
    if config["sampling"]["split"] not in config["features"]["splits"]:
        problems.append(f"sampling.split: '{config['sampling']['split']}' is not one of features.splits")
    for name in config["sampling"]["control_strength"]:
        if name not in config["backbones"]["names"]:
            problems.append(f"sampling.control_strength.{name}: not one of backbones.names")
    for name in config["backbones"]["weights"]:
        if name not in config["backbones"]["names"]:
            problems.append(f"backbones.weights.{name}: not one of backbones.names")
    if config["applications"]["backbone"] not in config["backbones"]["names"]:
        problems.append(f"applications.backbone: '{config['applications']['backbone']}' is not one of backbones.names")
    if "unpooled" not in config["controlnet"]["variants"]:
        problems.append("applications: need the unpooled variant in controlnet.variants")
    names = modular_stage_names(config["modular"])
    analyses = config["modular_analyses"]
    for key, wanted in [("token_noise.stages", analyses["token_noise"]["stages"]),
                        ("finetune.stage", [analyses["finetune"]["stage"]])]:
        for name in wanted:
            if name not in names:
                problems.append(f"modular_analyses.{key}: '{name}' is not a stage of {config['modular']['backbone']} "
                                f"({', '.join(names)})")
    fid_features = config["metrics"]["fid"]["features"]
    if fid_features != "inception" and fid_features not in config["backbones"]["names"]:
        problems.append(f"metrics.fid.features: '{fid_features}' is neither 'inception' nor one of backbones.names")
    return problems


def forward_family(backbone: str) -> str:
    """How modular inversion stages the forward model ``modular.backbone``: ``detr`` (``detr:<hub id>``,
    transformers), ``vit`` (a timm ViT) or ``cnn`` (any other timm model)."""
    if backbone.startswith("detr:"):
        return "detr"
    return "vit" if "vit" in backbone.split(".")[0] else "cnn"


def modular_stage_names(modular: Mapping[str, Any]) -> list[str]:
    """The stage names ``featinv.modular`` gives the forward model (without building it)."""
    family = forward_family(modular["backbone"])
    if family == "detr":
        return ["bb", "enc", "dec", "pred"]
    if family == "vit":
        return ["bb", "enc", "pred"]
    return ["stem", *(f"blocks{k}" for k in range(1, len(modular["groups"]) + 1)), "head", "pred"]


def deep_merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Overlay onto base the way Snakemake's ``--configfile`` does: mappings merge, the rest replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load(*paths: str | Path) -> dict[str, Any]:
    """Load params.yaml and optional overlays (later files win), validated."""
    if not paths:
        paths = (REPO_ROOT / "params.yaml",)
    config: dict[str, Any] = {}
    for path in paths:
        overlay = yaml.safe_load(Path(path).read_text()) or {}
        config = deep_merge(config, overlay)
    validate(config, source=" + ".join(str(p) for p in paths))
    return config
