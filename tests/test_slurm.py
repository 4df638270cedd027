"""The SLURM profile on a real cluster: `../shared/slurm-local/slurm-local start` brings up a
single-node SLURM here (no GPUs, no accounting database), and .ci/run starts it where it can.
A pipeline target goes through `workflow/profiles/slurm` with GPU requests switched off
(`--configfile config/no-gpus.yaml`), and its outputs equal those of a local run."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from featinv import rowstore
from test_workflow import make_project, run

TARGET = "results/backbones/demo/tf_efficientnet_lite0-val.json"
STORE = "data/features/demo/tf_efficientnet_lite0/val.zarr"
# What this test cluster needs beyond the profile: no accounting database, so job states come from
# squeue and no account is guessed; status checks start early because the jobs are short.
CLUSTER = ["--slurm-status-command", "squeue", "--slurm-no-account", "--slurm-init-seconds-before-status-checks", "2"]


def cluster_up() -> bool:
    if shutil.which("sbatch") is None:
        return False
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return state.returncode == 0 and bool(re.search(r"^(idle|mix|alloc)", state.stdout, re.M))


pytestmark = pytest.mark.skipif(not cluster_up(), reason="no SLURM cluster answers (start one with "
                                "../shared/slurm-local/slurm-local start)")


def test_target_through_slurm_equals_a_local_run(tmp_path):
    cluster, local = make_project(tmp_path / "cluster"), make_project(tmp_path / "local")
    snake = [sys.executable, "-m", "snakemake"]
    out = run(snake + ["--profile", "workflow/profiles/slurm", "--configfile", "config/no-gpus.yaml", *CLUSTER,
                       TARGET], cluster)
    run(snake + ["--cores", "2", TARGET], local)

    # Both jobs went through SLURM: a job id each, SLURM's log of each under results/logs/slurm/.
    submitted = dict(re.findall(r"rule_(\w+?)/\S*?(\d+)\.log", " ".join(
        line for line in out.splitlines() if "has been submitted with SLURM jobid" in line)))
    assert set(submitted) == {"build_shards", "extract_features"}, out[-3000:]
    for rule, job in submitted.items():
        logs = list((cluster / "results/logs/slurm" / f"rule_{rule}").rglob(f"{job}.log"))
        assert len(logs) == 1 and f"Finished jobid: 0 (Rule: {rule})" in logs[0].read_text()
    states = subprocess.run(["squeue", "--states=all", "--noheader", "-o", "%i|%T|%b", "-j", ",".join(submitted.values())],
                            capture_output=True, text=True, check=True).stdout.split()
    assert sorted(states) == sorted(f"{job}|COMPLETED|N/A" for job in submitted.values())  # and no GRES asked

    # The same outputs as a local run.
    assert (cluster / "data/shards/demo/manifest.json").read_text() == (local / "data/shards/demo/manifest.json").read_text()
    a, b = rowstore.open_complete(cluster / STORE), rowstore.open_complete(local / STORE)
    for name in ("features", "pooled", "topk_indices", "topk_probs", "labels", "keys"):
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)
    # the reports agree but for their timings (and the stamp's hash of each report's own content)
    report = lambda root: {k: v for k, v in json.loads((root / TARGET).read_text()).items()
                           if k not in ("extraction", "provenance")}
    assert report(cluster) == report(local)
    stamp = lambda root: json.loads((root / TARGET).read_text())["provenance"]
    assert stamp(cluster)["id"] == stamp(local)["id"] and stamp(cluster)["inputs"] == stamp(local)["inputs"]
