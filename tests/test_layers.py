"""The package's layers import downward only (the import-linter contract in pyproject.toml)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(project: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(project / "src")}
    return subprocess.run([str(LINT), "--no-cache"], cwd=project, env=env, capture_output=True, text=True, timeout=300)


def test_imports_run_downward_only():
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_or_sideways_import_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "src" / "featinv", tmp_path / "src" / "featinv",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    views = tmp_path / "src" / "featinv" / "data" / "views.py"
    views.write_text(views.read_text() + "\nimport featinv.metrics.stats  # noqa: E402\n")
    sampler = tmp_path / "src" / "featinv" / "diffusion" / "sample.py"
    sampler.write_text(sampler.read_text() + "\nimport featinv.modular.inverses  # noqa: E402\n")
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "featinv.data.views -> featinv.metrics.stats" in result.stdout
    assert "featinv.diffusion.sample -> featinv.modular.inverses" in result.stdout
