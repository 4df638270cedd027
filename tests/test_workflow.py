"""The real workflow on a tiny config: Snakemake builds shards and feature stores, a second run has
nothing to do, and `dvc repro` of the same stages reproduces the same bytes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO
from featinv.config import deep_merge
from featinv.features import store

TINY = {
    "data": {"per_class": {"train": None, "val": 1}, "shard_maxcount": 8,
             "demo": {"image_size": 64, "train_crops": 1, "val_crops": 1}},
    "backbones": {"names": ["tf_efficientnet_lite0"]},
    "features": {"batch_size": 4, "num_workers": 0, "rows_per_shard": 8, "rows_per_chunk": 4},
    "diffusion": {"device": "cpu", "targets": {"batch_size": 8, "num_workers": 0},
                  "base": {"resolution": 16, "patch": 2, "block_out_channels": [16, 32], "text_hidden": 16,
                           "train": {"steps": 6, "batch_size": 4, "checkpoint_every": 3, "lr_warmup_steps": 0}}},
    "controlnet": {"encoder": {"hidden": 8, "depth": 1},
                   "train": {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "lr_warmup_steps": 0}},
    "sampling": {"steps": 2, "rows_per_shard": 4, "preview": 4},
}


def run(cmd, cwd, **kw):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    for name in ("Snakefile", "dvc.yaml", "workflow", "config"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    params = deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # dvc.yaml names the code it depends on: link the package source into the copy.
    (root / "src").symlink_to(REPO / "src")
    return root


@pytest.mark.slow
def test_snakemake_then_nothing_to_do_then_dvc_reproduces(project):
    snake = [sys.executable, "-m", "snakemake", "--cores", "2"]
    run(snake, project)
    stores = sorted((project / "data" / "features" / "demo").glob("*/*.zarr"))
    assert [p.relative_to(project).as_posix() for p in stores] == [
        "data/features/demo/tf_efficientnet_lite0/train.zarr",
        "data/features/demo/tf_efficientnet_lite0/val.zarr",
    ]
    report = json.loads((project / "results/backbones/demo/tf_efficientnet_lite0-val.json").read_text())
    assert report["n_images"] == 12 and report["fmap_shape"] == [1280, 7, 7]
    for variant in ("unpooled", "pooled"):
        samples = store.open_store(project / f"data/samples/demo/tf_efficientnet_lite0-{variant}/val.zarr")
        assert samples["images"].shape == (12, 1, 3, 16, 16)
        assert (project / f"results/samples/demo/tf_efficientnet_lite0-{variant}-val.png").exists()
        meta = json.loads((project / f"data/models/demo/controlnet/tf_efficientnet_lite0-{variant}/featinv.json").read_text())
        assert meta["variant"] == variant and meta["steps"] == 4
    assert (project / "results/base/demo/samples.png").exists()
    assert len((project / "results/training/demo/base-loss.csv").read_text().splitlines()) == 1 + 6
    assert "Nothing to be done" in run(snake + ["-n"], project)

    manifest = json.loads((project / "data/shards/demo/manifest.json").read_text())
    before = store.open_store(stores[1])["features"][:]

    run(["git", "init", "-q"], project)
    run([sys.executable, "-m", "dvc", "init", "-q"], project)
    run([sys.executable, "-m", "dvc", "repro"], project)
    assert json.loads((project / "data/shards/demo/manifest.json").read_text()) == manifest
    np.testing.assert_array_equal(store.open_store(stores[1])["features"][:], before)
    assert "up to date" in run([sys.executable, "-m", "dvc", "status"], project)
    assert "didn't change" in run([sys.executable, "-m", "dvc", "repro"], project)
