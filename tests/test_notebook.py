"""examples/quickstart.ipynb runs top to bottom (nbclient, a real Jupyter kernel) on small fixture
models shaped as the demo's, and the committed copy holds the cells examples/make_quickstart.py writes."""

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from featinv.config import section
from featinv.diffusion.base import create_demo_base
from test_diffusion import PROMPT, TINY_BASE, make_net, randomise

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def _maker():
    spec = importlib.util.spec_from_file_location("make_quickstart", ROOT / "examples" / "make_quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_notebook_has_the_cells_its_maker_writes():
    committed = nbformat.read(NOTEBOOK, as_version=4)
    made = _maker().notebook()
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in made.cells]
    # it carries a real run's outputs: three figures and a score line per image
    images = [o for c in committed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 3
    assert sum("unpooled" in o.get("text", "") for c in committed.cells for o in c.get("outputs", [])) == 1


def _fixture_models(root: Path, demo_shards) -> None:
    """Small models shaped as the demo's lite0 pair, and the demo shards, under ``root`` as the main
    job leaves them."""
    tmp_path = root
    base = create_demo_base(section("diffusion.base", TINY_BASE))
    base.save(tmp_path / "models" / "base")
    for variant in ("unpooled", "pooled"):
        net = make_net(base, channels=1280, fmap=(7, 7), pooled=variant == "pooled")
        randomise(net.controlnet, 3)
        net.meta.update({"backbone": "tf_efficientnet_lite0", "fmap_shape": [1280, 7, 7], "input_size": 224,
                         "view": "eval_transform", "variant": variant, "base_model": "models/base",
                         "prompt": PROMPT, "steps": 1})
        net.save_pretrained(tmp_path / "data" / "models" / "demo" / "controlnet" / f"tf_efficientnet_lite0-{variant}")
    (tmp_path / "data" / "shards").mkdir(parents=True)
    (tmp_path / "data" / "shards" / "demo").symlink_to(demo_shards)


def test_the_readme_python_example_runs_as_printed(demo_shards, tmp_path, monkeypatch):
    """The README's `In Python` block, run as printed from the project root after the main job (on
    fixture models of the demo's shapes): it reconstructs a val crop and prints its scores."""
    import re

    _fixture_models(tmp_path, demo_shards)
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## In Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    printed = []
    exec(compile(code, "README.md", "exec"), {"print": printed.append})
    assert (tmp_path / "edited.png").exists()
    scores = printed[0]
    assert set(scores) >= {"cosine_sim", "top5_match", "top1_match"} and -1 <= float(scores["cosine_sim"][0]) <= 1


def test_the_notebook_runs_on_fixture_models(demo_shards, tmp_path, monkeypatch):
    _fixture_models(tmp_path, demo_shards)
    monkeypatch.setenv("FEATINV_QUICKSTART_ROOT", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = _maker().notebook()
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "examples")}}
                   ).execute()  # raises CellExecutionError, with the cell and traceback, on any error
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3
    scores = "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    assert scores.count("image ") == 3 and "tf_efficientnet_lite0 [1280, 7, 7] 1 steps" in scores
