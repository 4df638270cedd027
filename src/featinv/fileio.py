"""Small file helpers shared by every stage: atomic writes and the one content digest (``sha256``)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

BLOCK = 1 << 20


def sha256(source: bytes | os.PathLike, ends: int | None = None, skip: Collection[str] = ()) -> str:
    """The project's one content digest, hex SHA-256: of ``bytes``; of a file's content (what
    ``sha256sum`` prints); of a directory tree (each file's relative path and digest, in path order,
    files named in ``skip`` left out). ``ends``: a file larger than 2 x ``ends`` bytes counts by its size
    and its first and last ``ends`` bytes (change detection of large outputs in constant time;
    integrity checks read every byte)."""
    if isinstance(source, bytes):
        return hashlib.sha256(source).hexdigest()
    if not isinstance(source, os.PathLike):
        raise TypeError(f"sha256 takes bytes or a path, got {type(source).__name__}")
    path = Path(source)
    if path.is_file():
        return _file_sha256(path, ends)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name not in skip):
        digest.update(f.relative_to(path).as_posix().encode() + b"\0" + _file_sha256(f, ends).encode())
    return digest.hexdigest()


def _file_sha256(path: Path, ends: int | None) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if ends is not None and size > 2 * ends:
            digest.update(f"{size}\0".encode() + fh.read(ends))
            fh.seek(-ends, 2)
            digest.update(fh.read())
        else:
            for chunk in iter(lambda: fh.read(BLOCK), b""):
                digest.update(chunk)
    return digest.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write under a temporary name and rename, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def csv_text(header: list[str], rows: list[list[Any]], float_format: str = ".4f") -> str:
    """A CSV document (header + rows) with floats written as ``float_format``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[format(v, float_format) if isinstance(v, float) else v for v in row] for row in rows])
    return buf.getvalue()
