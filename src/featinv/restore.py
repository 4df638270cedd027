"""After ``dvc pull`` / ``dvc checkout``: tell Snakemake that the outputs DVC restored are up to date.

DVC restores outputs with fresh modification times in arbitrary order and without Snakemake's own
records (``.snakemake/metadata``: the params and code each output was made with). Snakemake would
then rerun jobs whose inputs look newer than their outputs, and could not see a later params change.
``featinv sync`` first asks DVC whether every stage is what its params, code and inputs make (``dvc
status``, which compares content hashes with ``dvc.lock``); only then does it let Snakemake mark
the targets' jobs as done (``snakemake --touch --forceall``: outputs touched in DAG order, the
current params and code recorded for every job). It never marks a stale output up to date.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


class NotRestoredError(ValueError):
    """DVC reports stages whose outputs are not what dvc.lock records: nothing to mark."""


def dvc_stages(targets: list[str], workdir: str | Path = ".") -> list[str]:
    """The DVC stages (``name`` or ``name@item``) whose outputs are ``targets`` (output paths, or
    files inside an output directory); a target that is already a stage stays as it is. DVC's
    ``--with-deps`` follows the pipeline upstream only from stage names: given an output path, it
    takes that one stage alone."""
    from dvc.repo import Repo

    with Repo(str(workdir)) as repo:
        outs = {str(out.def_path): stage.addressing for stage in repo.index.stages for out in stage.outs}
        names = {stage.addressing for stage in repo.index.stages} | {stage.name for stage in repo.index.stages}
    stages = []
    for target in targets:
        stage = outs.get(target) or next((s for o, s in outs.items() if target.startswith(o + "/")), None)
        if stage is None and target not in names:
            raise NotRestoredError(f"{target} is no output of a stage in dvc.yaml (regenerate it: "
                                   "`python -m featinv.dvcyaml`)")
        stages.append(stage or target)
    return list(dict.fromkeys(stages))


def dvc_changes(targets: list[str], workdir: str | Path = ".") -> dict:
    """``dvc status --json`` of the stages that make ``targets`` (output paths or stages) and every
    stage upstream of them (all stages when none): stage -> what changed ({} when up to date)."""
    stages = dvc_stages(targets, workdir) if targets else []
    cmd = [sys.executable, "-m", "dvc", "status", "--json"] + (["--with-deps", *stages] if stages else [])
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NotRestoredError(f"`dvc status` failed in {Path(workdir).resolve()}: {proc.stderr.strip()[-500:]}")
    text = proc.stdout.strip()
    return json.loads(text) if text else {}


def sync(targets: list[str], configfiles: list[str], workdir: str | Path = ".") -> list[str]:
    """Mark every job of ``targets`` done for Snakemake, after DVC confirms that their outputs are
    the ones dvc.lock records; returns the command it ran."""
    changes = dvc_changes(targets, workdir)
    if changes:
        stages = ", ".join(sorted(changes))
        raise NotRestoredError(
            f"dvc status reports {len(changes)} stage(s) that are not what dvc.lock records ({stages}): "
            "run `dvc pull` (or `dvc checkout`) to restore them, or `snakemake --cores all` / `dvc repro` "
            "to rebuild them; nothing was marked up to date")
    cmd = [sys.executable, "-m", "snakemake", "--touch", "--forceall", "--no-hooks", "--cores", "1", "--quiet", "all"]
    if configfiles:
        cmd += ["--configfile", *configfiles]
    cmd += ["--", *targets]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NotRestoredError(f"snakemake --touch failed:\n{(proc.stdout + proc.stderr).strip()[-3000:]}")
    return cmd


def commit(targets: list[str], workdir: str | Path = ".") -> None:
    """After Snakemake built ``targets`` (output paths) under params.yaml: record them and every stage
    upstream in dvc.lock (``dvc commit``), so that ``dvc status`` agrees with ``snakemake -n`` that
    nothing is stale, and ``dvc push`` carries what Snakemake made."""
    try:
        stages = dvc_stages(targets, workdir)
    except NotRestoredError as exc:
        print(f"warning: not recorded in dvc.lock: {exc}", file=sys.stderr)
        return
    cmd = [sys.executable, "-m", "dvc", "commit", "--force", "--quiet", "--with-deps", *stages]
    times = _mtimes(_stage_outs(workdir), workdir)
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    _restore_mtimes(times, workdir)
    if proc.returncode != 0:
        print(f"warning: `dvc commit` of what Snakemake built failed, so `dvc status` will call it changed "
              f"until `dvc commit` or `dvc repro`:\n{(proc.stdout + proc.stderr).strip()[-2000:]}", file=sys.stderr)


def _stage_outs(workdir: str | Path = ".") -> list[str]:
    """Every output path dvc.yaml's stages declare."""
    from dvc.repo import Repo

    with Repo(str(workdir)) as repo:
        return sorted({str(out.def_path) for stage in repo.index.stages for out in stage.outs})


def _mtimes(paths: list[str], workdir: str | Path = ".") -> dict[str, int]:
    """Modification times (ns, of the links themselves) of ``paths`` and everything below them."""
    import os

    times = {}
    for path in paths:
        full = Path(workdir) / path
        if not full.exists():
            continue
        found = [full] + ([Path(d) / n for d, dirs, files in os.walk(full) for n in dirs + files] if full.is_dir() else [])
        for p in found:
            times[str(p)] = p.lstat().st_mtime_ns
    return times


def _restore_mtimes(times: dict[str, int], workdir: str | Path = ".") -> None:
    """Give every path its recorded modification time back: ``dvc commit`` moves a new output into the
    cache and links or copies it back, touching it after the outputs Snakemake made from it, which
    would otherwise make the next ``snakemake`` rerun their jobs. Deepest paths first, so that a
    directory's own time is set after its contents."""
    import os

    for path in sorted(times, key=lambda p: -p.count(os.sep)):
        try:
            if os.lstat(path).st_mtime_ns != times[path]:
                os.utime(path, ns=(times[path], times[path]), follow_symlinks=False)
        except FileNotFoundError:
            continue
