"""benchmarks/gpu.sh (issue 26) on the CPU with tiny models: it runs end to end and writes every
figure's field, so the prepared accelerator run never rots. (The diffusers peer column's equality
with featinv's sampler is tests/test_diffusion.py::test_the_peer_pipeline_drives_the_same_components_to_the_same_images.)"""

import importlib.util
import json
import subprocess
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_benchmark_runs_tiny_on_the_cpu_and_writes_every_figure(tmp_path):
    bench = load_gpu_bench()
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), str(out), "--tiny", "--inline", "--budget", "300",
                           "--candidates", "a", "--base-shards", "", "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=None)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "gpu.json").read_text())
    for section, fields in bench.FIELDS.items():
        assert doc[section].get("status", "ok") == "ok", (section, doc[section])
        assert "error" not in doc[section], (section, doc[section]["error"])
        missing = [f for f in fields if f not in doc[section]]
        assert not missing, (section, missing)
    for key in ("resnet50", "convnext_base"):
        missing = [f for f in bench.EXTRACT_FIELDS if f not in doc["extraction"][key]]
        assert not missing, (key, missing)
    names = [v["name"] for v in doc["sampling"]["variants"]]
    assert names[0].startswith("autocast") and any("compile" in n for n in names)
    assert doc["sampling"]["images_per_s"] > 0 and doc["sampling"]["images_per_s_diffusers_pipeline"] > 0
    candidate = doc["base"]["candidates"]["a"]
    missing = [f for f in bench.BASE_FIELDS if f not in candidate]
    assert not missing, missing
    assert candidate["status"] == "ok" and candidate["steps"] == 2
    md = (out / "gpu.md").read_text()
    assert "sampling, featinv batched sampler" in md and "demo base candidate a" in md
    # what comes back from the device: at most 8 plain files, each at most 16 MiB, simple names
    files = sorted(out.iterdir())
    assert len(files) <= 8 and all(f.is_file() and f.stat().st_size <= 16 << 20 for f in files)
    # the shipped layout, float16 safetensors, with its loss log: export-base and load_base read it
    with tarfile.open(out / "demo-base-gpu-a.tar") as tar:
        members = tar.getnames()
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert "demo-base-gpu-a/unet/diffusion_pytorch_model.safetensors" in members
    assert "demo-base-gpu-a/base-loss.csv" in members
    from featinv.diffusion.base import load_base

    base = load_base(tmp_path / "unpacked" / "demo-base-gpu-a")
    assert base.noise_scheduler.config.prediction_type == "v_prediction" and base.resolution == 64


def test_large_files_are_split_into_parts_that_come_back(tmp_path):
    bench = load_gpu_bench()
    src = tmp_path / "big.bin"
    data = bytes(range(256)) * ((bench.PART + 1000) // 256 + 1)
    src.write_bytes(data)
    (tmp_path / "out").mkdir()
    names = bench.place(src, tmp_path / "out", "big.tar")
    assert names == ["big.tar.00", "big.tar.01"]
    assert b"".join((tmp_path / "out" / n).read_bytes() for n in names) == data
