"""Recording what Snakemake built in DVC (the Snakefile's onsuccess, `featinv.restore.commit`) leaves
the outputs' modification times as Snakemake made them, so that a complete run has nothing left to do."""

import os
import subprocess
import sys

import pytest

from featinv.restore import commit

OLD = 1_577_836_800_000_000_000  # 2020-01-01, in ns


def _repo(root):
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    (root / "dvc.yaml").write_text('stages:\n  make:\n    cmd: "true"\n    outs:\n      - out.txt\n      - outdir\n')
    (root / "out.txt").write_text("made by a job\n")
    (root / "outdir").mkdir()
    (root / "outdir" / "a.bin").write_bytes(os.urandom(3000))
    paths = [root / "out.txt", root / "outdir" / "a.bin", root / "outdir"]
    for p in paths:
        os.utime(p, ns=(OLD, OLD))
    return paths


@pytest.mark.parametrize("cache_type", [None, "hardlink,symlink"])
def test_dvc_commit_keeps_the_outputs_modification_times(tmp_path, monkeypatch, cache_type):
    """Under DVC's default cache (a copy) and under links (docs/paper-scale.md: on a cluster
    filesystem, ImageNet-sized outputs are not copied into the cache a second time)."""
    monkeypatch.chdir(tmp_path)  # as the Snakefile's onsuccess runs it: in the workflow's directory
    paths = _repo(tmp_path)
    if cache_type:
        subprocess.run([sys.executable, "-m", "dvc", "config", "cache.type", cache_type], cwd=tmp_path, check=True)
    commit(["out.txt"])
    assert [p.lstat().st_mtime_ns for p in paths] == [OLD] * 3
    if cache_type:  # the workspace file is the cache's, not a second copy
        assert paths[0].stat().st_nlink == 2 or paths[0].is_symlink()
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=tmp_path, capture_output=True, text=True)
    assert "up to date" in status.stdout  # recorded: dvc.lock holds the outputs, the cache their content
    assert (tmp_path / "dvc.lock").exists() and any((tmp_path / ".dvc" / "cache").rglob("*"))


def test_plain_dvc_commit_touches_a_new_output(tmp_path):
    """What the restoration is for: DVC itself gives a newly cached file a fresh modification time
    (seen with DVC 3.67), after the outputs Snakemake made from it."""
    paths = _repo(tmp_path)
    subprocess.run([sys.executable, "-m", "dvc", "commit", "--force", "-q", "make"], cwd=tmp_path, check=True)
    assert paths[0].stat().st_mtime_ns != OLD
