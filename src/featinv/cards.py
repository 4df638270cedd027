"""Model cards in the Hugging Face format (``README.md``: YAML front matter, then Markdown), written
into every trained model directory when it is saved (ControlNets, inverses, modular inverses) or
shipped (the demo base), so the directory can be shared as it is. One writer, one format, one name.

The front matter carries the hub's fields (``library_name``, ``tags``, ``base_model``, ``license``,
``datasets``) and a ``featinv`` block with the facts a reader checks (backbone, layer, variant, map
shape, steps, final loss, params hash); :func:`read_card` parses it back. A shipped directory's card
also lists every other file with its size and sha256 (``files=True``), which :func:`verify` checks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from featinv.fileio import atomic_write_text, sha256

CARD = "README.md"
LICENCE_NOTE = (
    "The weights derive from their inputs: the backbone's weights, the base diffusion model and the training "
    "images. No licence is asserted here beyond theirs (`license: other`); read each input's own licence "
    "(the Python package or hub repository named below) before sharing.")


def _front(front: dict[str, Any]) -> str:
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def _table(rows: list[tuple[str, Any]]) -> str:
    return "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def write_card(directory: str | Path, front: dict[str, Any], title: str, sections: list[tuple[str, str]],
               files: bool = False) -> Path:
    """``directory/README.md``: front matter, a title and ``(heading, Markdown)`` sections; ``files``:
    then a ``Files`` section listing every other file of the directory with its bytes and sha256."""
    body = f"# {title}\n\n" + "".join(f"## {heading}\n\n{text.strip()}\n\n" for heading, text in sections)
    if files:
        body += "## Files\n\n| file | bytes | sha256 |\n|---|---|---|\n" + "".join(
            f"| `{name}` | {size} | `{digest}` |\n" for name, size, digest in file_table(directory))
    path = Path(directory) / CARD
    atomic_write_text(path, _front(front) + "\n" + body.rstrip() + "\n")
    return path


_ROW = re.compile(r"^\| `([^`]+)` \| (\d+) \| `([0-9a-f]{64})` \|$")


def file_table(directory: str | Path) -> list[tuple[str, int, str]]:
    """(relative path, bytes, sha256) of every file under ``directory`` but the card, sorted."""
    directory = Path(directory)
    return [(p.relative_to(directory).as_posix(), p.stat().st_size, sha256(p))
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != CARD]


def card_files(directory: str | Path) -> dict[str, tuple[int, str]]:
    """The file table of a model card: path -> (bytes, sha256)."""
    text = (Path(directory) / CARD).read_text()
    rows = {m.group(1): (int(m.group(2)), m.group(3)) for m in map(_ROW.match, text.splitlines()) if m}
    if not rows:
        raise ValueError(f"{Path(directory) / CARD} has no file table")
    return rows


def verify(directory: str | Path) -> None:
    """Raise, naming each, if a file listed in the card is missing or differs, or a file is not listed."""
    listed = card_files(directory)
    present = {name: (size, digest) for name, size, digest in file_table(directory)}
    problems = [f"{name}: missing" for name in sorted(set(listed) - set(present))]
    problems += [f"{name}: not in the model card" for name in sorted(set(present) - set(listed))]
    problems += [f"{name}: sha256 {present[name][1]} differs from the card's {listed[name][1]}"
                 for name in sorted(set(listed) & set(present)) if present[name] != listed[name]]
    if problems:
        raise ValueError(f"model at {directory} does not match its model card: " + "; ".join(problems))


def read_card(path: str | Path) -> tuple[dict[str, Any], str]:
    """(front matter, body) of a model card; a clear error when it has no front matter."""
    text = Path(path).read_text()
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        raise ValueError(f"{path}: no YAML front matter (a model card starts with '---')")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head) or {}, body


def _round(value: Any, digits: int = 5) -> Any:
    return round(float(value), digits) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def controlnet_card(directory: str | Path, meta: dict[str, Any], training: dict[str, Any], data: dict[str, Any],
                    train_cfg: dict[str, Any]) -> Path:
    """The card of a trained FeatInv ControlNet. ``meta``: its ``featinv.json``; ``training``: the
    training summary (steps, seconds, final loss, params hash); ``data``: dataset, split and rows
    trained on; ``train_cfg``: ``controlnet.train``."""
    backbone, variant = meta["backbone"], meta["variant"]
    seconds = training.get("total_seconds", training.get("seconds"))
    front = {
        "library_name": "diffusers",
        "tags": ["featinv", "feature-inversion", "controlnet", "interpretability", backbone, variant],
        "base_model": str(meta["base_model"]),
        "license": "other",
        "license_name": "licences-of-the-inputs",
        "datasets": [str(data.get("dataset") or "unknown")],
        "featinv": {
            "kind": "controlnet", "backbone": backbone, "layer": meta["layer"], "variant": variant,
            "fmap_shape": list(meta["fmap_shape"]), "view": meta.get("view", "eval_transform"),
            "input_size": meta.get("input_size"), "weights_source": meta["weights_source"],
            "steps": int(training["steps"]), "final_loss": _round(training["final_loss"]),
            "params_hash": training["params_hash"], "wall_time_s": round(float(seconds or 0)),
            "train_rows": int(data.get("rows") or 0),
        },
    }
    conditioned = ("the spatial map" if variant == "unpooled"
                   else "the map average-pooled to one vector (the paper's baseline)")
    sections = [
        ("What it is", f"A FeatInv ControlNet (Neukirch, Vielhaben and Strodthoff, arXiv:2505.21032): it steers the frozen base diffusion model "
                       f"`{meta['base_model']}` to images whose `{backbone}` features match a given feature map. "
                       f"Conditioned on {conditioned} of layer `{meta['layer']}`, shape {tuple(meta['fmap_shape'])}."),
        ("Model", _table([("backbone", f"`{backbone}`"), ("backbone weights", f"`{meta['weights_source']}`"),
                          ("layer", meta["layer"]), ("variant", variant),
                          ("feature map", " x ".join(str(s) for s in meta["fmap_shape"])),
                          ("what the backbone saw", f"{meta.get('view', 'eval_transform')} at "
                                                    f"{meta.get('input_size')} px"),
                          ("base model", f"`{meta['base_model']}`"), ("prompt", f"\"{meta.get('prompt', '')}\"")])),
        ("Training", _table([("dataset", data.get("dataset")), ("split", data.get("split")),
                             ("training rows (views)", data.get("rows")), ("steps", training["steps"]),
                             ("batch size", train_cfg.get("batch_size")), ("learning rate", train_cfg.get("lr")),
                             ("wall time", f"{float(seconds or 0):.0f} s"),
                             ("final loss", f"{float(training['final_loss']):.4f}"),
                             ("params hash", f"`{training['params_hash']}`")])),
        ("Use", "```python\nfrom featinv import FeatInvPipeline\n\n"
                f"pipe = FeatInvPipeline.from_pretrained(\"{Path(directory).as_posix()}\")\n"
                "out = pipe(images=[image], seed=0)   # or feature_maps=...\n"
                "out.images[0]\n```"),
        ("Remake", f"```bash\nsnakemake --cores all {Path(directory).as_posix()}\n```\n"
                   "Its Table 1 row (cosine-sim, top-5/1 match, FID) is in `results/table1.md` after "
                   "`snakemake --cores all results/table1.csv`."),
        ("Licences of the inputs", LICENCE_NOTE),
    ]
    return write_card(directory, front, f"FeatInv ControlNet: {backbone}, {variant}", sections)


def modular_card(directory: str | Path, meta: dict[str, Any], backbone: str, dataset: str | None,
                 seconds: float | None, command_target: str) -> Path:
    """The card of a set of modular and classic inverses (``meta``: their ``meta.json``)."""
    params = meta.get("params", {})
    final = meta.get("final_loss", {})
    front = {
        "library_name": "pytorch",
        "tags": ["featinv", "feature-inversion", "modular-inversion", "interpretability", backbone],
        "base_model": backbone,
        "license": "other",
        "license_name": "licences-of-the-inputs",
        "datasets": [str(dataset or "unknown")],
        "featinv": {
            "kind": "modular", "backbone": backbone, "stages": list(meta["stages"]),
            "shapes": [list(s) for s in meta["shapes"]], "n_train": int(meta["n_train"]),
            "instances": int(meta.get("instances", 1)), "steps": params.get("steps"),
            "final_loss": {k: [_round(v) for v in vs] for k, vs in final.items()},
            "wall_time_s": round(float(seconds or 0)),
        },
    }
    rows = [(f"`{name}`", " x ".join(str(s) for s in shape),
             f"{final.get('modular', [None] * len(meta['stages']))[i]:.4g}" if final.get("modular") else "",
             f"{final.get('classic', [None] * len(meta['stages']))[i]:.4g}" if final.get("classic") else "")
            for i, (name, shape) in enumerate(zip(meta["stages"], meta["shapes"]))]
    stages = ("| stage | representation | modular final loss | classic final loss |\n|---|---|---|---|\n"
              + "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in rows))
    sections = [
        ("What it is", f"Inverse networks of `{backbone}` (modular feature inversion): one per stage, trained to "
                       "map that stage's representation back to the previous one (modular, chained to reach "
                       "pixels), and full-path inverses from each stage straight to pixels (classic)."),
        ("Stages", stages),
        ("Training", _table([("dataset", dataset), ("training images", meta["n_train"]),
                             ("steps", params.get("steps")), ("batch size", params.get("batch_size")),
                             ("learning rate", params.get("lr")), ("instances", meta.get("instances", 1)),
                             ("wall time", f"{float(seconds or 0):.0f} s")])),
        ("Use", "```python\nfrom featinv.modular import ModularInversion\n\n"
                f"inv = ModularInversion.from_pretrained(\"{Path(directory).as_posix()}\")\n"
                "images = inv.invert(images, stage=-1)   # pixels -> stage -> back to pixels\n```"),
        ("Remake", f"```bash\nsnakemake --cores all {command_target}\n```"),
        ("Licences of the inputs", LICENCE_NOTE),
    ]
    return write_card(directory, front, f"Modular feature inverses: {backbone}", sections)
