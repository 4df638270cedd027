"""Modular inversion at scale: stage representations live in a rowstore and training reads them per
batch, so a split whose representations exceed the memory it may use still trains."""

import json
import os
import subprocess
import sys

import numpy as np
import yaml

from conftest import REPO, demo_data_params

BUDGET = 400 << 20  # bytes of address space allowed above what the process holds before training (streaming peaks near 300 MB)

SCRIPT = r'''
import json, resource, sys
import numpy as np, torch
from featinv import config
from featinv.modular.forward import load_forward
from featinv.modular.trained import REPRESENTATIONS, load_trained, train_inverses

shards, out, budget, params = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
cfg = config.section("modular", params)
load_forward(cfg)  # imports, weights and kernels loaded before the cap is set

def address_space():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmSize:"))

resource.setrlimit(resource.RLIMIT_AS, (address_space() + budget, resource.RLIM_INFINITY))
try:  # the cap is real: the representations held at once do not fit
    held = np.ones(int(sys.argv[5]) // 4, dtype=np.float32)
    print("UNCAPPED"); sys.exit(1)
except MemoryError:
    pass
summary = train_inverses(cfg, shards, out, out + "/loss.csv", progress=False)
trained = load_trained(cfg, out)
print(json.dumps({"n_train": summary["n_train"], "mean_image": list(trained.mean_image.shape)}))
'''


def test_inverse_training_streams_representations_under_a_memory_cap(tmp_path):
    from featinv.data.shards import build
    from featinv.data.sources import make_source

    p = demo_data_params(train_crops=320, val_crops=1, image_size=64)
    build(make_source(p), tmp_path / "sh", "demo", p.splits, p.per_class, 1024)
    params = {**yaml.safe_load((REPO / "params.yaml").read_text())["modular"], "image_size": 64, "steps": 3,
              "batch_size": 8, "hidden": 8}
    n = 12 * 320
    per_image = 4 * (3 * 64 * 64 + 32 * 32 * 32 + 24 * 16 * 16 + 80 * 4 * 4 + 320 * 2 * 2 + 1280 * 2 * 2 + 1000)
    total = n * per_image  # every stage of every train image, float32: 920 MB
    assert total > 2 * BUDGET
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "sh"), str(tmp_path / "model"), str(BUDGET),
                           json.dumps(params), str(total)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"n_train": n, "mean_image": [1, 3, 64, 64]}
    from featinv import rowstore

    store = rowstore.open_complete(tmp_path / "model" / "train-representations.zarr")
    assert store["x1"].shape == (n, 32, 32, 32) and store["x0"].dtype == np.float32


def test_a_representation_store_is_reused_only_for_the_same_images_and_model(demo_shards, tmp_path):
    from featinv import config, rowstore
    from featinv.modular.forward import load_forward
    from featinv.modular.representations import stage_rows, write_representations

    params = {**yaml.safe_load((REPO / "params.yaml").read_text())["modular"], "image_size": 32}
    forward = load_forward(config.section("modular", params))
    out = write_representations(forward, demo_shards, "val", tmp_path / "r.zarr", progress=False)
    first = (out / "zarr.json").stat().st_mtime_ns
    reps = stage_rows(out)
    assert len(reps) == len(forward.staged.names) + 1 and reps[0].shape[1:] == (3, 32, 32)
    assert write_representations(forward, demo_shards, "val", out, progress=False) == out
    assert (out / "zarr.json").stat().st_mtime_ns == first  # complete and made the same way: reused
    resized = load_forward(config.section("modular", {**params, "fit": "resize"}))
    write_representations(resized, demo_shards, "val", out, progress=False)
    assert rowstore.open_complete(out).attrs["fit"] == "resize"  # another fit: rebuilt
