"""Two processes on CPU (gloo), launched the way rules launch them (`featinv --processes 2`):
extraction and sampling write the same stores as one process, and DDP training keeps the
effective batch, checkpoints, and resumes after a kill -9."""

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import featinv, finish
from featinv import rowstore
from featinv.config import section
from featinv.diffusion.base import create_demo_base
from test_diffusion import PROMPT, SAMPLING, TINY_BASE, TRAIN, make_net, randomise

FEATURES = {"splits": ["val"], "batch_size": 4, "num_workers": 0, "device": "cpu", "rows_per_shard": 4,
            "rows_per_chunk": 2, "topk": 5, "view": "eval_transform", "layer": {}}
BACKBONES = {"names": ["tf_efficientnet_lite0"], "weights": {}, "input_size": {}}


def assert_same_store(a, b, names):
    ga, gb = rowstore.open_complete(a), rowstore.open_complete(b)
    for name in names:
        np.testing.assert_array_equal(ga[name][:], gb[name][:], err_msg=name)
    assert list(ga["keys"][:]) == list(gb["keys"][:])


@pytest.fixture(scope="module")
def stores(tmp_path_factory, demo_shards):
    """The demo val split (24 images, 6 blocks of 4) extracted by one process and by two, while port
    29500 is taken (two such jobs run side by side on one node: each launch finds a free port)."""
    root = tmp_path_factory.mktemp("extract")
    args = lambda name: ["extract-features", "--backbone", "tf_efficientnet_lite0", "--shards", demo_shards, "--split", "val",
                         "--store", root / f"{name}.zarr", "--report", root / f"{name}.json",
                         "--config", json.dumps({"features": FEATURES, "backbones": BACKBONES})]
    import socket

    with socket.socket() as busy:  # another multi-process job on this node holds accelerate's default port
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 29500))
        busy.listen()
        one, two = featinv(*args("one")), featinv(*args("two"), processes=2)
        finish(one), finish(two)
    return root


def test_two_process_extraction_writes_the_same_store(stores):
    assert_same_store(stores / "one.zarr", stores / "two.zarr",
                      ["features", "pooled", "topk_indices", "topk_probs", "labels"])
    assert rowstore.open_complete(stores / "two.zarr")["features"].shape == (24, 1280, 7, 7)
    report = json.loads((stores / "two.json").read_text())  # written once, by the main process
    assert report["extraction"]["processes"] == 2 and report["n_images"] == 24
    assert report["extraction"]["extracted"] == 12  # its share: 3 of the 6 blocks


def test_two_process_sampling_writes_the_same_images(stores, tmp_path):
    base = create_demo_base(section("diffusion.base", TINY_BASE))
    base.save(tmp_path / "base")
    net = make_net(base, channels=1280, fmap=(7, 7))
    randomise(net)  # a ControlNet whose residuals are not zero
    net.save_pretrained(tmp_path / "cn")
    cfg = {"diffusion": {"prompt": PROMPT, "device": "cpu", "targets": {"batch_size": 8, "num_workers": 0},
                         "base": TINY_BASE},
           "sampling": {**SAMPLING, "rows_per_shard": 5, "batch_size": 3}}  # 24 maps: 5 blocks, split 3 + 2
    args = lambda name: ["sample", "--model", tmp_path / "cn", "--base", tmp_path / "base",
                         "--features", stores / "one.zarr", "--out", tmp_path / f"{name}.zarr",
                         "--config", json.dumps(cfg)]
    one, two = featinv(*args("one")), featinv(*args("two"), processes=2)
    finish(one), finish(two)
    assert_same_store(tmp_path / "one.zarr", tmp_path / "two.zarr", ["images"])
    images = rowstore.open_complete(tmp_path / "two.zarr")["images"][:]
    assert images.shape == (24, 2, 3, 16, 16) and images.std() > 0


def train_args(out, targets):
    cfg = {"diffusion": {"prompt": PROMPT, "device": "cpu", "targets": {"batch_size": 8, "num_workers": 0},
                         "base": {**TINY_BASE, "train": {**TRAIN, "steps": 40, "checkpoint_every": 4}}}}
    return ["train-base", "--targets", targets, "--out", out, "--loss-csv", f"{out}.csv", "--config", json.dumps(cfg)]


def weights(out):
    return load_file(Path(out) / "unet" / "diffusion_pytorch_model.safetensors")


def test_ddp_training_keeps_the_batch_checkpoints_and_resumes(demo_targets, tmp_path):
    one, two = featinv(*train_args(tmp_path / "one", demo_targets)), \
        featinv(*train_args(tmp_path / "two", demo_targets), processes=2)
    finish(one), finish(two)
    # Each process trains on its half of the global batch and DDP averages the gradients: the same
    # trajectory as one process on the whole batch, up to float summation order (which Adam
    # amplifies on near-zero gradients, so the weights agree closely, not bit for bit).
    loss_one = np.loadtxt(f"{tmp_path / 'one'}.csv", delimiter=",", skiprows=1, usecols=1)
    loss_two = np.loadtxt(f"{tmp_path / 'two'}.csv", delimiter=",", skiprows=1, usecols=1)
    assert len(loss_two) == 40
    np.testing.assert_allclose(loss_two, loss_one, rtol=1e-4)  # the logged loss is the global batch's
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys()
    diff = torch.cat([(a[k] - b[k]).flatten() for k in a]).norm()
    assert diff < 1e-2 * torch.cat([a[k].flatten() for k in a]).norm()

    # kill -9 every process of the run after its first checkpoint (as a lost node would); rerun: the
    # same weights as the uninterrupted two-process run.
    killed = featinv(*train_args(tmp_path / "killed", demo_targets), processes=2)
    ckpt = tmp_path / "killed.ckpt"
    deadline = time.time() + 300
    while not any(p.name >= "step-00000004" and not p.name.endswith(".tmp") for p in ckpt.glob("step-*")):
        assert time.time() < deadline and killed.poll() is None, "no checkpoint appeared"
        time.sleep(0.05)
    kill_all(str(tmp_path / "killed"))
    killed.wait()
    assert not (tmp_path / "killed" / "unet").exists()
    finish(featinv(*train_args(tmp_path / "killed", demo_targets), processes=2))
    summary = json.loads((tmp_path / "killed" / "training.json").read_text())
    assert summary["resumed_from"] >= 4
    c = weights(tmp_path / "killed")
    assert all(torch.equal(b[k], c[k]) for k in b)


def kill_all(marker: str) -> None:
    """SIGKILL every process whose command line names ``marker`` (the launcher and its workers: the
    launcher starts the workers in sessions of their own)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def test_processes_only_for_verbs_that_split_their_work(tmp_path):
    out = finish_fail(featinv("preview-samples", "--samples", tmp_path, "--shards", tmp_path, "--split", "val",
                              "--n", "2", "--out", tmp_path / "x.png", processes=2))
    assert "only extract-features, train-base, train-controlnet, sample, train-inverse split" in out


def finish_fail(proc):
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    return out
