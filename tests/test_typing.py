"""The package type-checks: mypy over src/featinv with its generated, typed params sections."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def mypy(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=600)


def test_mypy_passes_over_the_package(tmp_path):
    result = mypy("--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout


def test_mypy_sees_the_params_types(tmp_path):
    """A misuse of a typed params field is an error mypy names (the fields are not Any)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from featinv.config import Controlnet\n\n"
                   "def f(cfg: Controlnet) -> str:\n"
                   "    return cfg.train.steps + 'x'\n")
    result = mypy("--cache-dir", str(tmp_path / "cache"), str(bad), cwd=tmp_path)
    assert result.returncode == 1
    assert 'Unsupported operand types for + ("int" and "str")' in result.stdout
