"""Shipping a trained embedded base model: half-precision safetensors in the diffusers layout, and a
model card (``MODEL_CARD.md``) that lists every file with its sha256.

The weights are stored as float16 (half the bytes; the loader computes in float32). The card's
file table is what :func:`verify` checks, so a changed or corrupted file is caught.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from featinv.diffusion.base import load_base
from featinv.fileio import atomic_write_text, sha256_file

CARD = "MODEL_CARD.md"
_ROW = re.compile(r"^\| `([^`]+)` \| (\d+) \| `([0-9a-f]{64})` \|$")


def export_base(model_dir: str | Path, out: str | Path) -> list[Path]:
    """Write the base model at ``model_dir`` to ``out`` with float16 weights; return the files written."""
    model_dir, out = Path(model_dir), Path(out)
    base = load_base(model_dir)
    if out.exists():
        shutil.rmtree(out)
    base.unet.to(torch.float16)
    base.text_encoder.to(torch.float16)
    base.save(out)
    return sorted(p for p in out.rglob("*") if p.is_file())


def file_table(directory: str | Path) -> list[tuple[str, int, str]]:
    """(relative path, bytes, sha256) of every file under ``directory`` but the card, sorted."""
    directory = Path(directory)
    return [(str(p.relative_to(directory)), p.stat().st_size, sha256_file(p))
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != CARD]


def write_card(directory: str | Path, sections: list[tuple[str, str]]) -> Path:
    """``MODEL_CARD.md``: the given (heading, Markdown body) sections, then the file table."""
    directory = Path(directory)
    lines = []
    for heading, body in sections:
        lines += [heading if heading.startswith("#") else f"## {heading}", "", body.rstrip(), ""]
    lines += ["## Files", "", "| file | bytes | sha256 |", "|---|---|---|"]
    lines += [f"| `{name}` | {size} | `{digest}` |" for name, size, digest in file_table(directory)]
    path = directory / CARD
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def card_files(directory: str | Path) -> dict[str, tuple[int, str]]:
    """The file table of a model card: path -> (bytes, sha256)."""
    text = (Path(directory) / CARD).read_text()
    rows = {m.group(1): (int(m.group(2)), m.group(3)) for m in map(_ROW.match, text.splitlines()) if m}
    if not rows:
        raise ValueError(f"{Path(directory) / CARD} has no file table")
    return rows


def verify(directory: str | Path) -> None:
    """Raise if any file listed in the card is missing or differs, or a file is not listed."""
    listed = card_files(directory)
    present = {name: (size, digest) for name, size, digest in file_table(directory)}
    problems = [f"{name}: missing" for name in sorted(set(listed) - set(present))]
    problems += [f"{name}: not in the model card" for name in sorted(set(present) - set(listed))]
    problems += [f"{name}: sha256 {present[name][1]} differs from the card's {listed[name][1]}"
                 for name in sorted(set(listed) & set(present)) if present[name] != listed[name]]
    if problems:
        raise ValueError(f"base model at {directory} does not match its model card: " + "; ".join(problems))


def parameter_counts(directory: str | Path) -> dict[str, int]:
    base = load_base(directory)
    return {"unet": sum(p.numel() for p in base.unet.parameters()),
            "text_encoder": sum(p.numel() for p in base.text_encoder.parameters())}


def json_block(data: dict[str, Any]) -> str:
    return "```json\n" + json.dumps(data, indent=1, sort_keys=True) + "\n```"
