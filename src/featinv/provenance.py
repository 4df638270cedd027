"""Provenance: what each pipeline output was made from, recorded with it and checked by its readers.

A job's *stamp* names its rule, the hash of the params sections its verb read, the hash of the source
files its verb runs, and the identity of every input it read. It is written into each of the job's
outputs that can hold it (``provenance.json`` inside a directory output, a ``"provenance"`` key of a
JSON output) together with the content hash of its other outputs. The identity of a stamped output is
its stamp's ``id``, a hash of everything above, so a rerun with other params, code or inputs gives
its outputs a new identity; an output of no job (a shipped model, a weights file) is identified by
its content. ``check`` walks a file's recorded inputs and fails, naming the stale file and the
command that refreshes it, when one of them is no longer what it read.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Iterable

from featinv.config import plain, result_params
from featinv.fileio import sha256

STAMP = "provenance.json"
KEY = "provenance"
REFRESH = "snakemake --cores all {target}"  # or `dvc repro`: both rerun what is stale
SMALL = 1 << 20  # files up to 1 MiB are identified by their whole content, larger by their size and ends


class StaleError(ValueError):
    """An output read something that has changed since: its producer must run again."""


def params_hash(sections: Any) -> str:
    """The one params hash of the project: of the params sections a verb reads, by name (a mapping, or
    the typed sections object a verb gets), without their execution keys: what decides the job's
    outputs. Stamps, model cards, ``featinv.json`` and ``training.json`` all record this one."""
    named = plain(sections)
    return _digest(json.dumps({name: result_params(name, named[name]) for name in sorted(named)},
                              sort_keys=True).encode())


def code_hash(files: Iterable[str | Path], root: str | Path = ".") -> str:
    """A short hash of the named source files' paths and *parsed* code: a Python file counts by its
    syntax tree without docstrings (comments never reach the tree), so an edit of a comment, a
    docstring or the layout changes nothing, while any change of what the code does changes the hash.
    Other files count by their bytes."""
    return _digest(b"".join(name.encode() + b"\0" + _code_bytes(Path(root) / name) + b"\0"
                            for name in sorted(str(f) for f in files)))


def _code_bytes(path: Path) -> bytes:
    """What of a source file decides what it does (see ``code_hash``)."""
    text = path.read_bytes()
    if path.suffix != ".py":
        return text
    tree = ast.parse(text, filename=str(path))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False).encode()


def _digest(data: bytes) -> str:
    return sha256(data)[:16]


def content_hash(path: str | Path) -> str:
    """A file's or directory tree's short content hash (``fileio.sha256``; files over ``SMALL`` by
    their size and ends; stamps left out)."""
    return sha256(Path(path), ends=SMALL // 2, skip=(STAMP, ".snakemake_timestamp"))[:16]


def read_stamp(path: str | Path) -> dict[str, Any] | None:
    """The stamp recorded in ``path`` (a directory's ``provenance.json``, a JSON file's key), or None."""
    path = Path(path)
    try:
        if path.is_dir():
            file = path / STAMP
            return json.loads(file.read_text()) if file.exists() else None
        if path.suffix == ".json" and path.is_file():
            doc = json.loads(path.read_text())
            return doc.get(KEY) if isinstance(doc, dict) else None
    except (OSError, json.JSONDecodeError):
        return None
    return None


def identity(path: str | Path) -> str:
    """What ``path`` is now: its stamp's id, or its content hash when no job stamped it."""
    path = Path(path)
    if not path.exists():
        return "missing"
    stamp = read_stamp(path)
    return stamp["id"] if stamp else content_hash(path)


SIDECAR = ".provenance.json"  # a job output named so holds the job's stamp alone (see ``stamp``)


def make_stamp(rule: str, params: str, code: str, inputs: Iterable[str], outputs: Iterable[str]) -> dict[str, Any]:
    """The stamp of a finished job of ``rule`` (input identities read now, from the files on disk).
    ``outputs`` maps every output but the stamp's holders to its content hash, and every JSON holder
    to the hash of its content without the stamp, so that an output edited or truncated afterwards is
    told apart from the one the job wrote."""
    ins = {p: identity(p) for p in sorted(set(map(str, inputs)))}
    outputs = sorted(map(str, outputs))
    ident = _digest(json.dumps([rule, params, code, ins, outputs], sort_keys=True).encode())
    holders = _holders(outputs)
    outs = {p: (_body_hash(Path(p)) if p in holders else content_hash(p)) for p in outputs
            if Path(p).exists() and not (p in holders and Path(p).is_dir())}
    return {"id": ident, "rule": rule, "params_hash": params, "code_hash": code, "inputs": ins, "outputs": outs}


def _holders(outputs: list[str]) -> set[str]:
    """The outputs that hold the stamp: a ``*.provenance.json`` sidecar alone where the job has one
    (its other JSON outputs, DVC's metrics files, stay free of it), else every directory and JSON
    object output."""
    sidecars = {p for p in outputs if p.endswith(SIDECAR)}
    return sidecars or {p for p in outputs if Path(p).exists() and _holds_stamp(Path(p))}


def _body_hash(path: Path) -> str:
    """A JSON output's content without its stamp."""
    doc = json.loads(path.read_text())
    doc.pop(KEY, None)
    return _digest(json.dumps(doc, sort_keys=True).encode())


def _holds_stamp(path: Path) -> bool:
    if path.is_dir():
        return True
    if path.suffix != ".json":
        return False
    try:
        return isinstance(json.loads(path.read_text()), dict)
    except (OSError, json.JSONDecodeError):
        return False


def stamp(rule: str, params: str, code: str, inputs: Iterable[str], outputs: Iterable[str]) -> dict[str, Any]:
    """Record a finished job's stamp in every output that can hold one (a directory's
    ``provenance.json``, a JSON object's ``"provenance"`` key), or only in its ``*.provenance.json``
    sidecar output where it names one (written here); returns the stamp."""
    outputs = [str(o) for o in outputs]
    record = make_stamp(rule, params, code, inputs, outputs)
    for out in map(Path, sorted(_holders(outputs))):
        if out.name.endswith(SIDECAR):
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({KEY: record}, indent=1, sort_keys=True) + "\n")
        elif out.is_dir():
            (out / STAMP).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        else:
            doc = json.loads(out.read_text())
            doc[KEY] = record
            out.write_text(json.dumps(doc, indent=1) + "\n")
    return record


def _stamp_listing(path: Path) -> tuple[Path, dict[str, Any]] | None:
    """The stamped output beside ``path`` whose job also wrote ``path`` (a JSON file of the same
    directory whose stamp lists it), and that stamp."""
    for candidate in sorted(path.parent.glob("*.json")):
        record = read_stamp(candidate)
        if record and str(path) in record["outputs"]:
            return candidate, record
    return None


def check(paths: Iterable[str | Path], target: str | None = None) -> list[str]:
    """Fail (``StaleError``) if any of ``paths``, or anything upstream that a stamp records, read an
    input that has changed since. A path without a stamp of its own (a CSV) is checked through the
    stamp of the JSON output beside it that its job wrote with it. Returns the paths that carry no
    stamp at all (made outside the pipeline): they cannot be checked. ``target`` names what to
    rebuild in the error (default: the stale path)."""
    unstamped: list[str] = []
    seen: set[str] = set()

    def refresh(path: str) -> str:
        return f"refresh it with `{REFRESH.format(target=target or path)}` (or `dvc repro`)"

    def walk(path: str, top: bool) -> None:
        if path in seen:
            return
        seen.add(path)
        record = read_stamp(path)
        if path.endswith(".json") and Path(path).is_file():
            _check_json(path, record, refresh)
        if record is None:
            listing = _stamp_listing(Path(path)) if Path(path).is_file() else None
            if listing is None:
                if top and Path(path).exists():
                    unstamped.append(path)
                return
            owner, record = listing
            if record["outputs"][path] != content_hash(path):
                raise StaleError(f"{path} is not the file {record['rule']} wrote with {owner}: {refresh(path)}")
            path = str(owner)
        for inp, recorded in record["inputs"].items():
            now = identity(inp)
            if now != recorded:
                what = "is missing" if now == "missing" else "has changed"
                raise StaleError(f"{path} is stale: its input {inp} {what} since {record['rule']} made it "
                                 f"(recorded {recorded}, now {now}); {refresh(path)}")
            walk(inp, False)

    for p in paths:
        walk(str(p), True)
    return unstamped


def _check_json(path: str, record: dict[str, Any] | None, refresh) -> None:
    """A JSON output is valid JSON and, where its stamp records its content, still that content."""
    try:
        json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise StaleError(f"{path} is not valid JSON (truncated or edited?): {exc}; {refresh(path)}") from None
    if record is not None and path in record.get("outputs", {}) and record["outputs"][path] != _body_hash(Path(path)):
        raise StaleError(f"{path} is not the file {record['rule']} wrote (edited since): {refresh(path)}")


def check_or_warn(paths: Iterable[str | Path], target: str | None = None) -> None:
    """``check``, printing a warning for inputs that carry no stamp."""
    import sys

    for path in check(paths, target):
        print(f"warning: {path} records no provenance (made outside the pipeline): not checked", file=sys.stderr)
