"""Per-model sampling tuning (paper section 4.1): the grid, the choice, and the sample rule using it."""

import json
import subprocess
import sys

import pytest

from conftest import REPO
from featinv.config import section
from featinv.diffusion.tuning import HEADER, Cell, best_cell
from test_diffusion import PROMPT, SAMPLING, TINY_BASE, make_net, randomise
from test_metrics import METRICS


def cell(strength, guidance, top1, cos):
    stat = lambda v: {"mean": v, "ci_low": v - 0.05, "ci_high": v + 0.05}  # noqa: E731
    return Cell(strength, guidance, {"top1": stat(top1), "top5": stat(min(1.0, top1 + 0.2)), "cosine_sim": stat(cos)})


def test_the_best_top1_cell_is_chosen_and_ties_go_to_cosine_then_grid_order():
    grid = [cell(0.5, 1.0, 0.30, 0.40), cell(0.5, 3.0, 0.55, 0.50), cell(1.0, 1.0, 0.55, 0.52),
            cell(1.0, 3.0, 0.20, 0.60), cell(1.5, 1.0, 0.55, 0.52)]
    assert (best_cell(grid).control_strength, best_cell(grid).guidance_scale) == (1.0, 1.0)  # tie on top-1: cos, then first
    assert best_cell(grid[:2]).guidance_scale == 3.0
    assert best_cell([cell(1.0, 1.0, 0.0, 0.1)]).control_strength == 1.0


def test_sampling_settings_are_fixed_or_the_tuned_choice(tmp_path):
    from featinv.diffusion.sample import sampling_settings

    fixed = section("sampling", {**SAMPLING, "control_strength": {"resnet50": 0.8}})
    assert sampling_settings(fixed, "resnet50") == (0.8, 1.75)
    assert sampling_settings(fixed, "convnext") == (1.0, 1.75)
    auto = section("sampling", {**SAMPLING, "tuning": "auto"})
    with pytest.raises(ValueError, match="sampling.tuning is auto but no tuning result of resnet50"):
        sampling_settings(auto, "resnet50")
    (tmp_path / "t.json").write_text(json.dumps({"control_strength": 1.5, "guidance_scale": 3.0}))
    assert sampling_settings(auto, "resnet50", tmp_path / "t.json") == (1.5, 3.0)


def test_tuning_scores_every_cell_and_writes_its_choice(tmp_path, demo_shards):
    """A tiny random-weight model conditioned on real lite0 maps: every cell is scored on the same maps,
    the CSV lists the grid in order, the JSON holds the best cell, the heat map is drawn."""
    from featinv.backbones import create_backbone
    from featinv.diffusion.base import create_demo_base
    from featinv.diffusion.tuning import tune, write_tuning
    from featinv.features.extract import extract

    extract(create_backbone("tf_efficientnet_lite0"), demo_shards, "val", tmp_path / "val.zarr", batch_size=8,
            num_workers=0, device="cpu", rows_per_shard=8, rows_per_chunk=4, progress=False)
    base = create_demo_base(section("diffusion.base", TINY_BASE))
    net = make_net(base, channels=1280, fmap=(7, 7))
    randomise(net.controlnet, 3)
    sampling = section("sampling", {**SAMPLING, "steps": 2, "tune": {"maps": 5, "control_strength": [0.0, 2.0],
                                                                    "guidance_scale": [1.0, 3.0], "seed": 0}})
    cells, maps = tune(base, net, tmp_path / "val.zarr", sampling, section("metrics", METRICS), PROMPT, device="cpu",
                       progress=False)
    assert maps == 5 and [(c.control_strength, c.guidance_scale) for c in cells] == [(0.0, 1.0), (0.0, 3.0),
                                                                                   (2.0, 1.0), (2.0, 3.0)]
    for c in cells:
        assert all(c.scores[m]["ci_low"] <= c.scores[m]["mean"] <= c.scores[m]["ci_high"] for m in c.scores)
        assert 0 <= c.scores["top1"]["mean"] <= c.scores["top5"]["mean"] <= 1
    # Control strength 0 removes the ControlNet: those cells are the base model's samples (differ by guidance only).
    assert cells[0].scores != cells[2].scores
    chosen = write_tuning(cells, tmp_path / "t.csv", tmp_path / "t.png", tmp_path / "t.json", "toy-unpooled", maps)
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0].split(",") == HEADER and len(lines) == 5
    best = best_cell(cells)
    assert (chosen["control_strength"], chosen["guidance_scale"]) == (best.control_strength, best.guidance_scale)
    assert json.loads((tmp_path / "t.json").read_text())["scores"] == best.scores
    assert (tmp_path / "t.png").stat().st_size > 0


def test_paper_overlay_tunes_each_model_before_sampling_it():
    """`snakemake -n results/table1.csv --configfile config/paper.yaml`: one tune_sampling job per model,
    and each sample job reads its own model's choice."""
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "results/table1.csv", "--configfile",
                          "config/paper.yaml"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    counts = dict(line.split() for line in text.splitlines() if line.split()[:1] in (["tune_sampling"], ["sample"])
                  and len(line.split()) == 2 and line.split()[1].isdigit())
    assert counts == {"tune_sampling": "6", "sample": "6"}
    sample_cmds = [line for line in text.splitlines() if "featinv" in line and " sample " in line]
    assert len(sample_cmds) == 6
    for cmd in sample_cmds:
        model = cmd.split("--model data/models/imagenet/controlnet/")[1].split()[0]
        assert f"--tuned results/tuning/imagenet/{model}.json" in cmd
    plain = subprocess.run([sys.executable, "-m", "snakemake", "-n", "results/table1.csv"], cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert "tune_sampling" not in plain.stdout  # the embedded default samples with fixed settings
