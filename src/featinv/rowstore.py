"""Resumable per-row zarr stores: the engine behind feature stores, latent caches and samples.

A store holds arrays whose first axis is the row (one sample), sharded along rows; rows are
computed in blocks of one zarr shard, each written whole and then marked in ``done``, so memory is
bounded by one block and an interrupted run resumes at the first block not done. Work happens
under ``<path>.partial``, renamed into place when every block is done: a store at its final path
is always complete.

Several processes may fill one store (``open_shared``): each computes whole blocks of its own and
marks them in ``done``, whose flags are one chunk per block, so no two writers touch one object.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zarr

log = logging.getLogger(__name__)

# name -> (shape after the row axis, dtype, fill value); dtype "str" = variable-length strings.
ArraySpec = dict[str, tuple[tuple[int, ...], str, Any]]


def partial_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial")


def block_rows(n: int, rows_per_shard: int) -> int:
    return min(rows_per_shard, max(n, 1))


def _create(path: Path, n: int, arrays: ArraySpec, rows_per_shard: int, rows_per_chunk: int,
            attrs: dict[str, Any]) -> zarr.Group:
    shard = block_rows(n, rows_per_shard)
    chunk = min(rows_per_chunk, shard)
    if shard % chunk:
        chunk = shard
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    for name, (rest, dtype, fill) in arrays.items():
        if dtype == "str":
            group.create_array(name, shape=(n,), dtype=str, chunks=(shard,))
        else:
            group.create_array(name, shape=(n, *rest), dtype=dtype, chunks=(chunk, *rest), shards=(shard, *rest),
                               fill_value=fill)
    n_blocks = -(-n // shard)
    group.create_array("done", shape=(n_blocks,), dtype="bool", chunks=(1,), fill_value=False)
    group.attrs.update({**attrs, "n_rows": n, "rows_per_block": shard, "complete": False})
    return group


def open_or_resume(out: str | Path, n: int, arrays: ArraySpec, rows_per_shard: int, rows_per_chunk: int,
                   attrs: dict[str, Any]) -> tuple[zarr.Group, bool]:
    """The partial store for ``out``: resumed when it was started with exactly these ``attrs``,
    otherwise (re)created. Returns (group, resumed)."""
    partial = partial_path(out)
    if partial.exists():
        try:
            group = zarr.open_group(str(partial), mode="r+")
            old = dict(group.attrs)
            same = {k: old.get(k) for k in attrs} == json.loads(json.dumps(attrs))
            if same and old.get("rows_per_block") == block_rows(n, rows_per_shard):
                return group, True
        except Exception:  # unreadable leftovers: start over
            pass
        log.warning("discarding %s: it was started with other inputs", partial)
        shutil.rmtree(partial)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return _create(partial, n, arrays, rows_per_shard, rows_per_chunk, attrs), False


def open_shared(out: str | Path, n: int, arrays: ArraySpec, rows_per_shard: int, rows_per_chunk: int,
                attrs: dict[str, Any], procs) -> tuple[zarr.Group, bool]:
    """``open_or_resume`` for a job of several processes (``featinv.distributed.Processes``): the
    main process creates or resumes the store, the others open it once it is there. Only the main
    process sees ``resumed`` False (and fills the per-row arrays it writes up front)."""
    if procs.is_main:
        group, resumed = open_or_resume(out, n, arrays, rows_per_shard, rows_per_chunk, attrs)
    procs.barrier()
    if not procs.is_main:
        group, resumed = zarr.open_group(str(partial_path(out)), mode="r+"), True
    return group, resumed


def finish_shared(out: str | Path, procs) -> None:
    """Once every process has written its blocks, the main process finalizes the store."""
    procs.barrier()
    if procs.is_main:
        finalize(out)
    procs.barrier()


def pending_batches(group: zarr.Group, batch_size: int, procs=None) -> list[list[int]]:
    """Row batches of the blocks not yet done (of this process's share of them, given ``procs``).
    Batches never straddle blocks and split each block the same way every time, so a resumed or
    differently split run computes every row in the batch it would have had."""
    n = group.attrs["n_rows"]
    block = group.attrs["rows_per_block"]
    pending = np.flatnonzero(~group["done"][:]).tolist()
    if procs is not None:
        procs.barrier()  # every process has read the same flags before any block is marked done
        pending = procs.share(pending)
    batches = []
    for b in pending:
        lo, hi = int(b) * block, min((int(b) + 1) * block, n)
        batches += [list(range(s, min(s + batch_size, hi))) for s in range(lo, hi, batch_size)]
    return batches


class BlockWriter:
    """Collects per-batch results and writes each block whole once its last row arrives."""

    def __init__(self, group: zarr.Group):
        self.group, self.n = group, group.attrs["n_rows"]
        self.block = group.attrs["rows_per_block"]
        self.buffer: dict[str, list[np.ndarray]] = {}

    def add(self, rows: list[int], results: dict[str, np.ndarray]) -> None:
        for name, value in results.items():
            self.buffer.setdefault(name, []).append(value)
        last = rows[-1]
        if last + 1 == self.n or (last + 1) % self.block == 0:
            b = last // self.block
            for name, parts in self.buffer.items():
                self.group[name][b * self.block : last + 1] = np.concatenate(parts)
            self.group["done"][b] = True
            self.buffer = {}


def finalize(out: str | Path) -> None:
    """Mark the partial store complete, consolidate metadata once, and move it into place."""
    out = Path(out)
    partial = partial_path(out)
    group = zarr.open_group(str(partial), mode="r+")
    if not bool(np.all(group["done"][:])):
        raise RuntimeError(f"cannot finalize {partial}: blocks still missing")
    group.attrs["complete"] = True
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(str(partial))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)


def open_complete(path: str | Path) -> zarr.Group:
    """Open a complete store read-only; a partial or missing store is an error."""
    path = Path(path)
    if not path.exists():
        hint = " (an interrupted run left it at .partial: rerun it)" if partial_path(path).exists() else ""
        raise FileNotFoundError(f"store {path} does not exist{hint}")
    group = zarr.open_group(str(path), mode="r")
    if not group.attrs.get("complete"):
        raise ValueError(f"store {path} is incomplete: rerun the step that writes it")
    return group


def bytes_on_disk(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
