"""Shared fixtures: small real datasets built through the real code paths."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featinv.config import section

# No hub at test time: a missing weight file must fail at once, not after network retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one torch thread each (not four)
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def two_threads():
    """Torch on two threads for one test (the default on this 2-core machine), then back."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


# The twelve photographs the tests use (the embedded default uses all of DEMO_PHOTOS).
TEST_PHOTOS = ["astronaut", "brick", "chelsea", "china", "coffee", "flower", "grace_hopper", "grass", "gravel",
               "hubble_deep_field", "motorcycle", "rocket"]


def demo_data_params(**demo):
    """The ``data`` params section of a small demo (typed), with ``demo`` keys replaced."""
    params = {
        "dataset": "demo",
        "source": "demo",
        "root": "",
        "splits": ["train", "val"],
        "per_class": {"train": None, "val": 2},
        "shard_maxcount": 10,
        "views": {"splits": [], "count": 1, "scale": [0.3, 1.0], "flip": True, "seed": 0},
        "demo": {"image_size": 64, "train_crops": 3, "val_crops": 2, "val_fraction": 0.3, "seed": 0,
                 "photos": TEST_PHOTOS},
        "coco": {"annotations": "annotations/instances_{split}2017.json", "images": "{split}2017"},
    }
    params["demo"].update(demo)
    return section("data", params)


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> Path:
    """The demo source at a small size: 12 photos x (3 train + 2 val) crops of 64 px."""
    from featinv.data.shards import build
    from featinv.data.sources import make_source

    out = tmp_path_factory.mktemp("shards") / "demo"
    p = demo_data_params()
    build(make_source(p), out, "demo", p.splits, p.per_class, p.shard_maxcount)
    return out


def featinv(*args, processes: int = 1, **popen) -> subprocess.Popen:
    """`featinv --threads 1 --processes N <args>` as a rule runs it, output collected (see ``finish``)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "featinv", "--threads", "1", "--processes", str(processes), *map(str, args)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def kill_at_checkpoint(proc: subprocess.Popen, ckpt_dir: Path, step: int, timeout: float = 300) -> None:
    """SIGKILL a training ``featinv`` process once its checkpoint of ``step`` (or a later one) is complete."""
    deadline = time.time() + timeout
    while not any(p.name >= f"step-{step:08d}" and not p.name.endswith(".tmp") for p in Path(ckpt_dir).glob("step-*")):
        assert time.time() < deadline and proc.poll() is None, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    """Wait for a ``featinv`` process; fail with its output unless it succeeded."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.fixture(scope="session")
def demo_targets(tmp_path_factory, demo_shards) -> Path:
    """The demo train split as diffusion targets of the tiny base model (16 px, pixel space, patch 2)."""
    from featinv.diffusion.codec import PatchCodec
    from featinv.diffusion.targets import encode_targets

    out = tmp_path_factory.mktemp("targets") / "train.zarr"
    encode_targets(PatchCodec(2), "patch2", demo_shards, "train", out, 16, batch_size=16, num_workers=0,
                   device="cpu", progress=False)
    return out


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def photo_array(seed: int = 0, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size, dtype=np.float32)
    img = np.stack([base[None, :].repeat(size, 0), base[:, None].repeat(size, 1), np.full((size, size), 128.0)], -1)
    return np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def lite0_val_store(tmp_path_factory, demo_shards):
    from featinv.backbones import create_backbone
    from featinv.features.extract import extract

    out = tmp_path_factory.mktemp("metrics") / "val.zarr"
    extract(create_backbone("tf_efficientnet_lite0"), demo_shards, "val", out, batch_size=8, num_workers=0,
            device="cpu", rows_per_shard=8, rows_per_chunk=4, progress=False)
    return out
