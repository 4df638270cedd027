"""params.yaml: loading, overlays, validation against the JSON schema, and typed sections.

The schema lives in ``workflow/schemas/params.schema.yaml``; the Snakefile validates the merged
config with :func:`validate` before any job runs. The code reads params as typed, frozen sections
(:func:`sections`, :func:`typed`): one dataclass per object of the schema, made from the schema
itself, so that its fields are the schema's keys and nothing lists them a second time.
``config.Train`` is the ``train`` section of the base model and of the ControlNets,
``config.Controlnet`` the ``controlnet`` section, and so on (the class name is the key path in
CamelCase). Lists become tuples and free-keyed maps read-only mappings.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
import types
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from jsonschema import Draft202012Validator

from featinv import paramtypes
from featinv.paramtypes import *  # noqa: F401,F403  every section class by name: config.Train, config.Controlnet, ...

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "params.schema.yaml"


class ParamsError(ValueError):
    """A params file is invalid; the message names every offending key path."""


class NameNotFound(KeyError):
    """A name the user gave (a stage, a split) that is not there; the message says what is. The CLI
    prints it as one line (an unexpected ``KeyError`` keeps its traceback)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@functools.cache
def schema(schema_path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """The params schema (parsed once)."""
    return yaml.safe_load(Path(schema_path).read_text())


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
    validator = Draft202012Validator(schema(schema_path))
    problems = [_describe(e) for e in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))]
    if not problems:
        problems = _cross_checks(config)
    if problems:
        raise ParamsError(f"invalid {source}:\n  " + "\n  ".join(problems))


def section(name: str, value: Any) -> Any:
    """A section (as a CLI verb receives it) validated against its part of the schema and typed:
    ``section("controlnet", {...}).train.steps``. ``name`` is a key path: ``diffusion.base`` works too."""
    full = schema()
    node: Mapping[str, Any] = full
    path: tuple[str, ...] = ()
    for key in name.split("."):
        if key not in node.get("properties", {}):
            raise ParamsError(f"unknown params section '{name}'")
        node, ref = _resolve(node["properties"][key])
        path = ("$defs", ref) if ref else (*path, key)  # inside a definition, its classes
    validator = Draft202012Validator({**node, "$defs": full.get("$defs", {})})
    problems = [_describe(e) for e in validator.iter_errors(value)]
    if problems:
        raise ParamsError(f"invalid {name} section:\n  " + "\n  ".join(f"{name}.{p}" for p in problems))
    return _typed(node, value, path)


def sections(value: Any, *names: str) -> Any:
    """The params sections a CLI verb takes (``--config``: a JSON object keyed by section name),
    validated and typed: one frozen object whose attributes are the sections."""
    if not isinstance(value, dict):
        raise ParamsError(f"--config must be a JSON object of params sections {list(names)}")
    missing = [n for n in names if n not in value]
    if missing:
        raise ParamsError(f"--config lacks the params section(s) {missing}")
    return _sections_class(names)(**{n: section(n, value[n]) for n in names})


def typed(config: Mapping[str, Any]) -> Any:
    """A whole validated config (every section), typed: ``typed(load()).diffusion.base.resolution``."""
    return _typed(schema(), config, ())


def plain(value: Any) -> Any:
    """A typed section (or any part of one) back as plain JSON data: dicts and lists."""
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


EXECUTION = "x-execution"  # schema keyword: the key decides how a job runs, not what it produces


@functools.cache
def execution_keys(name: str = "") -> tuple[tuple[str, ...], ...]:
    """The key paths (below section ``name``; "" = the whole config) that the schema marks
    ``x-execution``: workers, inference batch sizes, devices, checkpoint cadence, store layout. What a
    job produces does not depend on them (each has a test showing it), so the params hash, the
    Snakemake trigger and dvc.yaml's params leave them out: changing one reruns nothing."""
    node: Mapping[str, Any] = schema()
    for key in filter(None, name.split(".")):
        node = _resolve(node["properties"][key])[0]

    def walk(node: Mapping[str, Any], path: tuple[str, ...]):
        node = _resolve(node)[0]
        for key, prop in node.get("properties", {}).items():
            if prop.get(EXECUTION):
                yield (*path, key)
            else:
                yield from walk(prop, (*path, key))

    return tuple(walk(node, ()))


def result_params(name: str, value: Any) -> Any:
    """Params section ``name`` (plain or typed) as plain data without its execution keys: what decides
    a job's outputs (``execution_keys``)."""
    value = copy.deepcopy(plain(value))
    for path in execution_keys(name):
        node = value
        for key in path[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return value


def result_keys(name: str) -> list[str]:
    """Section ``name`` as the dotted key paths that decide outputs: the section itself where it has no
    execution key, else its children, split down to where the execution keys sit (dvc.yaml's params)."""
    marked = execution_keys(name)
    if not marked:
        return [name]
    node = _node_at(tuple(name.split(".")))
    keys = []
    for key in node["properties"]:
        below = [p for p in marked if p[0] == key]
        if (key,) in below:
            continue
        keys += result_keys(f"{name}.{key}") if below else [f"{name}.{key}"]
    return keys


def _resolve(node: Mapping[str, Any]) -> tuple[Mapping[str, Any], str | None]:
    """A schema node with its ``$ref`` followed, and the name of the definition it refers to."""
    ref = node.get("$ref")
    if ref is None:
        return node, None
    name = ref.rsplit("/", 1)[-1]
    return schema()["$defs"][name], name


def _node_at(path: tuple[str, ...]) -> Mapping[str, Any]:
    """The schema node at a key path, or at ``("$defs", name, *keys)`` inside a definition."""
    node: Mapping[str, Any] = schema()
    if path[:1] == ("$defs",):
        node, path = node["$defs"][path[1]], path[2:]
    for key in path:
        node = _resolve(node["properties"][key])[0]
    return node


def _object_name(path: tuple[str, ...]) -> str:
    return _class_name(path[1:] if path[:1] == ("$defs",) else path) or "Params"


def _object_class(path: tuple[str, ...]) -> type:
    """The frozen dataclass of the schema object at ``path`` (a key path, or ``("$defs", name)``): the
    class of ``featinv.paramtypes`` that ``types_source`` generates from the schema."""
    return getattr(paramtypes, _object_name(path))


_SCALARS = {"integer": "int", "number": "float", "string": "str", "boolean": "bool", "null": "None"}


def _annotation(prop: Mapping[str, Any], path: tuple[str, ...]) -> str:
    """The Python type of the schema node ``prop`` at key path ``path``, as source text."""
    prop, ref = _resolve(prop)
    path = ("$defs", ref) if ref else path
    if "enum" in prop:
        return "Literal[" + ", ".join(repr(v) for v in prop["enum"]) + "]"
    if "oneOf" in prop or "anyOf" in prop:
        return " | ".join(dict.fromkeys(_annotation(alt, path) for alt in prop.get("oneOf", prop.get("anyOf"))))
    kind = prop.get("type")
    if isinstance(kind, list):
        return " | ".join(_annotation({**prop, "type": k}, path) for k in kind)
    if kind == "object" and "properties" in prop:
        return _object_name(path)
    if kind == "object":
        items = prop.get("additionalProperties")
        return f"Mapping[str, {_annotation(items, path) if isinstance(items, Mapping) else 'Any'}]"
    if kind == "array":
        return f"tuple[{_annotation(prop.get('items', {}), path)}, ...]"
    return _SCALARS.get(kind, "Any") if isinstance(kind, str) else "Any"


def _all_object_paths() -> list[tuple[str, ...]]:
    return [p for name, node in schema().get("$defs", {}).items()
            for p in [("$defs", name), *_object_paths(node, ("$defs", name))]] + [(), *_object_paths(schema(), ())]


def types_source() -> str:
    """``featinv/paramtypes.py``: one frozen dataclass per object of the schema, its fields typed from
    the schema (integer -> int, number -> float, string -> str, boolean -> bool, enum -> Literal,
    array -> tuple, map -> Mapping, an object -> its class), for editors and mypy."""
    out = ['"""Typed params sections, generated from workflow/schemas/params.schema.yaml by',
           "`python -m featinv.config` (tests/test_config.py checks that it is current): do not edit.",
           "Each class is an object of the schema, named by its key path in CamelCase; featinv.config's",
           'sections() and typed() fill them from validated params."""', "",
           "from __future__ import annotations", "", "from dataclasses import dataclass",
           "from typing import Any, Literal, Mapping", ""]
    for path in _all_object_paths():
        node = _node_at(path)
        where = path[1] if path[:1] == ("$defs",) else ".".join(path)
        doc = " ".join(node.get("description", f"The {where or 'whole'} section of params.yaml.").split())
        required = set(node.get("required", ()))
        fields = []
        for key, prop in node["properties"].items():
            kind = _annotation(prop, (*path, key))
            if key in required:
                fields.append((0, f"    {key}: {kind}"))
            else:
                default = _resolve(prop)[0].get("default")
                fields.append((1, f"    {key}: {kind if default is not None else kind + ' | None'} = {default!r}"))
        out += ["", "@dataclass(frozen=True)", f"class {_object_name(path)}:", f"    {_docstring(doc)}", ""]
        out += [line for _, line in sorted(fields, key=lambda f: f[0])]  # fields with a default come last
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _docstring(text: str) -> str:
    return repr(text) if '"""' in text or "\\" in text else f'"""{text}"""'


@functools.cache
def _sections_class(names: tuple[str, ...]) -> type:
    return dataclasses.make_dataclass("Sections", [(n, Any) for n in names], frozen=True,
                                      namespace={"__module__": __name__})


def _typed(node: Mapping[str, Any], value: Any, path: tuple[str, ...]) -> Any:
    """``value`` (valid under ``node``) with objects as frozen dataclasses, lists as tuples and
    free-keyed maps as read-only mappings."""
    node, ref = _resolve(node)
    path = ("$defs", ref) if ref else path  # a definition's objects are named after it, wherever it is used
    if isinstance(value, Mapping) and "properties" in node:
        cls = _object_class(path)
        props = node["properties"]
        return cls(**{k: _typed(props[k], v, (*path, k)) for k, v in value.items()})
    if isinstance(value, Mapping):
        items = node.get("additionalProperties")
        items = items if isinstance(items, Mapping) else {}
        return types.MappingProxyType({k: _typed(items, v, (*path, k)) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        items = node.get("items", {})
        return tuple(_typed(items, v, path) for v in value)
    return value


def _class_name(path: tuple[str, ...]) -> str:
    return "".join(part.title().replace("_", "") for part in path)


def _object_paths(node: Mapping[str, Any], path: tuple[str, ...]):
    """Key paths of every schema object with fixed keys below ``node`` (``$ref`` targets once)."""
    for key, prop in node.get("properties", {}).items():
        if "$ref" not in prop and "properties" in prop:
            yield (*path, key)
            yield from _object_paths(prop, (*path, key))




def _cross_checks(config: Mapping[str, Any]) -> list[str]:
    """Constraints between keys that JSON schema cannot express."""
    problems = []
    c = typed(narrow(config)[0])
    splits = list(c.data.splits)
    for split, limit in c.data.per_class.items():
        if split not in splits and limit is not None:  # null: an overlay cannot remove the default's key
            problems.append(f"data.per_class.{split}: {limit} for a split that is not one of data.splits {splits}")
    for split in c.features.splits:
        if split not in splits:
            problems.append(f"features.splits: '{split}' is not one of data.splits {splits}")
    if c.features.rows_per_shard % c.features.rows_per_chunk:
        problems.append(f"features.rows_per_chunk: {c.features.rows_per_chunk} must divide "
                        f"features.rows_per_shard ({c.features.rows_per_shard})")
    if c.sampling.split not in c.features.splits:
        problems.append(f"sampling.split: '{c.sampling.split}' is not one of features.splits")
    # per-backbone settings of backbones not listed are ignored (narrow), so an overlay may list fewer
    if "unpooled" not in c.controlnet.variants:
        problems.append("applications: need the unpooled variant in controlnet.variants")
    names = modular_stage_names(c.modular.backbone, c.modular.groups)
    for name in c.modular.lr_by_stage:
        if name not in names:
            problems.append(f"modular.lr_by_stage.{name}: not a stage of {c.modular.backbone} ({', '.join(names)})")
    for key, wanted in [("token_noise.stages", c.modular_analyses.token_noise.stages),
                        ("finetune.stage", [c.modular_analyses.finetune.stage])]:
        for name in wanted:
            if name not in names:
                problems.append(f"modular_analyses.{key}: '{name}' is not a stage of {c.modular.backbone} "
                                f"({', '.join(names)})")
    for key, train in (("diffusion.base.train", c.diffusion.base.train), ("controlnet.train", c.controlnet.train)):
        if train.loss == "x0" and train.snr_gamma > 0:
            problems.append(f"{key}.loss: 'x0' with {key}.snr_gamma {train.snr_gamma}: two weightings, choose one")
    fid_features = c.metrics.fid.features
    if fid_features != "inception" and fid_features not in c.backbones.names:
        problems.append(f"metrics.fid.features: '{fid_features}' is neither 'inception' nor one of backbones.names")
    return problems


def narrow(config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The config a run uses, and a note per setting it leaves aside, when ``backbones.names`` lists
    fewer backbones than other keys name (an overlay narrowing the paper's three to one): the
    per-backbone settings of backbones not listed are dropped (``backbones.input_size`` and
    ``weights``, ``sampling.control_strength``, ``features.layer``; weights named for the modular
    forward model stay), the application figures use the first listed backbone when theirs is not
    listed, and the layer study is off when its backbone is not listed (its layer is that model's)."""
    c = copy.deepcopy(dict(config))
    names, notes = c["backbones"]["names"], []
    for where, mapping in (("backbones.input_size", c["backbones"]["input_size"]),
                           ("backbones.weights", c["backbones"]["weights"]),
                           ("sampling.control_strength", c["sampling"]["control_strength"]),
                           ("features.layer", c["features"]["layer"])):
        for name in [n for n in mapping if n not in names]:
            if where == "backbones.weights" and name == c["modular"]["backbone"]:
                continue  # the modular forward model's weights
            notes.append(f"{where}.{name}: not one of backbones.names {names}, ignored")
            del mapping[name]
    app = c["applications"]["backbone"]
    if app not in names:
        notes.append(f"applications.backbone: '{app}' is not one of backbones.names: the figures use '{names[0]}'")
        c["applications"]["backbone"] = names[0]
    study = c["layers"]["backbone"]
    if study and study not in names:
        notes.append(f"layers.backbone: '{study}' is not one of backbones.names: no layer study")
        c["layers"]["backbone"] = ""
    return c, notes


def forward_family(backbone: str) -> str:
    """How modular inversion stages the forward model ``modular.backbone``: ``detr`` (``detr:<hub id>``,
    transformers), ``vit`` (a timm ViT) or ``cnn`` (any other timm model)."""
    if backbone.startswith("detr:"):
        return "detr"
    return "vit" if "vit" in backbone.split(".")[0] else "cnn"


def modular_run_name(backbone: str) -> str:
    """The directory name of modular inversion's inverses and results for the forward model
    ``modular.backbone`` (one dataset's shards serve several forward models: COCO, ViT and DETR):
    the name with every run of characters other than letters, digits, ``.``, ``_`` and ``-`` as ``-``
    (``detr:facebook/detr-resnet-50`` -> ``detr-facebook-detr-resnet-50``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", backbone).strip("-")


def modular_stage_names(backbone: str, groups: Sequence[Sequence[int]] = ()) -> list[str]:
    """The stage names ``featinv.modular`` gives the forward model ``modular.backbone`` with the block
    ``modular.groups`` (CNNs), without building it."""
    family = forward_family(backbone)
    if family == "detr":
        return ["bb", "enc", "dec", "pred"]
    if family == "vit":
        return ["bb", "enc", "pred"]
    return ["stem", *(f"blocks{k}" for k in range(1, len(groups) + 1)), "head", "pred"]


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


if __name__ == "__main__":  # after a schema change: regenerate featinv/paramtypes.py
    Path(paramtypes.__file__).write_text(types_source())
    print(f"wrote {paramtypes.__file__}")
