"""The shipped demo base model (models/demo-base) and the export that makes such a directory."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO
from featinv.config import section
from featinv.diffusion.base import create_demo_base, load_base
from featinv.cards import card_files, file_table, read_card, verify, write_card
from featinv.diffusion.export import export_base

SHIPPED = REPO / "models" / "demo-base"
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def test_shipped_files_match_the_model_card():
    verify(SHIPPED)
    listed = card_files(SHIPPED)
    assert {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
            "scheduler/scheduler_config.json", "codec.json"} <= set(listed)
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in listed)  # nothing to unpickle
    assert sum(size for size, _ in listed.values()) < 25 * 2**20


def test_params_point_at_the_shipped_base_and_describe_it():
    assert PARAMS["diffusion"]["base"]["source"] == "models/demo-base"
    base = load_base(SHIPPED)
    cfg = PARAMS["diffusion"]["base"]
    assert base.resolution == cfg["resolution"] and base.codec.patch == cfg["patch"]
    assert list(base.unet.config.block_out_channels) == cfg["block_out_channels"]
    assert base.noise_scheduler.config.prediction_type == cfg["prediction_type"]
    assert base.noise_scheduler.config.beta_schedule == cfg["beta_schedule"]
    assert next(base.unet.parameters()).dtype == torch.float32  # stored float16, computed float32


def test_a_changed_file_is_caught(tmp_path):
    copy = tmp_path / "base"
    shutil.copytree(SHIPPED, copy)
    (copy / "scheduler" / "scheduler_config.json").write_text("{}\n")
    (copy / "extra.txt").write_text("x")
    with pytest.raises(ValueError, match=r"scheduler_config.json: sha256 .* differs.*|extra.txt: not in the model card"):
        verify(copy)


def test_shipped_base_samples_look_like_the_training_photographs(demo_shards):
    """Samples of the trained base are nearer to crops of the demo photographs than samples of the same
    UNet untrained: the mean squared pixel distance to the nearest training crop, a check random weights
    fail. (lite0's per-position feature cosine does not separate them: the untrained UNet's flat, low-
    contrast outputs sit as close to the flat regions of the photographs as the trained samples do.)"""
    from featinv.diffusion.sample import sample_unconditional
    from featinv.data.target_view import view_images

    train = view_images(demo_shards, "train", 64).transpose(0, 3, 1, 2).astype(np.float64)
    distance = {}
    for name, base in (("trained", load_base(SHIPPED)), ("untrained", create_demo_base(section("diffusion.base", PARAMS["diffusion"]["base"])))):
        images = sample_unconditional(base, 8, PARAMS["diffusion"]["prompt"], "ddim", 10, 1.0, 0, key="test")
        distance[name] = float(np.mean([((train - x) ** 2).mean((1, 2, 3)).min() for x in images.astype(np.float64)]))
    assert distance["trained"] < 0.7 * distance["untrained"], distance


def test_export_writes_float16_safetensors_and_a_verifiable_card(tmp_path, demo_targets):
    from featinv.diffusion.recipes import train_base
    from test_diffusion import PROMPT, TINY_BASE, TRAIN

    train_base(section("diffusion.base", {**TINY_BASE, "train": {**TRAIN, "steps": 3}}), PROMPT, demo_targets, tmp_path / "trained",
               tmp_path / "loss.csv", "test", device="cpu", progress=False)
    files = export_base(tmp_path / "trained", tmp_path / "shipped")
    assert all(not f.name.endswith(".bin") for f in files)
    card = write_card(tmp_path / "shipped", {"featinv": {"kind": "base"}}, "Tiny", [("What", "text"), ("Data", "more")],
                      files=True)
    front, body = read_card(card)
    assert front == {"featinv": {"kind": "base"}} and body.startswith("\n# Tiny\n\n## What\n\ntext\n\n## Data")
    assert set(card_files(tmp_path / "shipped")) == {name for name, _, _ in file_table(tmp_path / "shipped")}
    verify(tmp_path / "shipped")
    trained, shipped = load_base(tmp_path / "trained"), load_base(tmp_path / "shipped")
    from safetensors.torch import load_file

    stored = load_file(tmp_path / "shipped" / "unet" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}
    x = torch.randn(2, *trained.latent_shape)
    t = torch.tensor([10, 500])
    text = trained.prompt_embeddings(PROMPT)[:1].expand(2, -1, -1)
    with torch.no_grad():
        a = trained.unet(x, t, encoder_hidden_states=text).sample
        b = shipped.unet(x, t, encoder_hidden_states=shipped.prompt_embeddings(PROMPT)[:1].expand(2, -1, -1)).sample
    torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)  # float16 rounding of the weights only

    from featinv.diffusion.recipes import base_objective

    cfg = section("diffusion.base", {**TINY_BASE, "train": {**TRAIN, "steps": 3}})
    shipped_loss = base_objective(tmp_path / "shipped", cfg, PROMPT, demo_targets, batches=4)
    assert shipped_loss == pytest.approx(base_objective(tmp_path / "trained", cfg, PROMPT, demo_targets, batches=4),
                                         rel=2e-2)
    assert shipped_loss == base_objective(tmp_path / "shipped", cfg, PROMPT, demo_targets, batches=4)  # same draws
    untrained = tmp_path / "untrained"
    create_demo_base(section("diffusion.base", TINY_BASE)).save(untrained)
    assert shipped_loss < base_objective(untrained, cfg, PROMPT, demo_targets, batches=4)


def test_the_ceiling_probe_keeps_more_of_an_image_the_later_it_starts(demo_shards):
    """The shipped base handed a held-out crop noised to t keeps more of it from t = 300 than from
    t = 900, and from t = 300 clearly more of its own crop than of another (own - mismatched > 0.05);
    a probe that ignored its start image would score own = mismatched at every t."""
    from featinv.data.target_view import view_images
    from featinv.diffusion.quality import ceiling_probe

    images = view_images(demo_shards, "val", 64)[::4][:24].transpose(0, 3, 1, 2)
    rows = {r["start_t"]: r for r in ceiling_probe(SHIPPED, images, "tf_efficientnet_lite0", starts=(900, 300),
                                                    prompt=PARAMS["diffusion"]["prompt"], device="cpu")}
    assert rows[300]["own"] > rows[900]["own"]
    assert rows[300]["margin"] > 0.05
    assert all(abs(r["margin"] - (r["own"] - r["mismatched"])) < 1e-9 for r in rows.values())


def test_ship_base_writes_a_verifiable_card_with_its_figures_probe_and_remake_command(tmp_path, demo_shards, demo_targets):
    """`featinv export-base`'s work on a tiny trained base: float16 files the card lists (verify), the
    quality table, a ceiling-probe row per start step whose margin is own - mismatched, and the remake
    command naming every params file it was read from."""
    import re

    from featinv import config
    from featinv.config import deep_merge
    from featinv.diffusion.export import ship_base
    from featinv.diffusion.recipes import train_base
    from test_diffusion import PROMPT, TINY_BASE, TRAIN

    base_params = {**TINY_BASE, "train": {**TRAIN, "steps": 3}}
    train_base(section("diffusion.base", base_params), PROMPT, demo_targets, tmp_path / "trained", tmp_path / "loss.csv",
               "test", device="cpu", progress=False)
    raw = deep_merge(config.load(REPO / "params.yaml"),
                     {"diffusion": {"base": base_params, "prompt": PROMPT, "device": "cpu"}, "sampling": {"steps": 4}})
    files = ("params.yaml", "config/demo-base.yaml", "config/demo-base-v.yaml")
    card = ship_base(config.typed(raw), tmp_path / "trained", tmp_path / "loss.csv", demo_shards, demo_targets,
                     tmp_path / "shipped", n=64, params_files=files).read_text()
    verify(tmp_path / "shipped")
    front, _ = read_card(tmp_path / "shipped" / "README.md")
    assert front["library_name"] == "diffusers" and front["featinv"]["kind"] == "base"
    assert front["featinv"]["params_hash"] == "test" and front["featinv"]["steps"] == 3
    assert (tmp_path / "shipped" / "samples.png").exists()
    probe = re.findall(r"^\| (\d+) \| ([-\d.]+) \| ([-\d.]+) \| ([-\d.]+) \|$", card, re.M)
    assert [int(r[0]) for r in probe] == [900, 600, 300]
    assert all(abs(float(own) - float(mis) - float(margin)) <= 0.0011 for _, own, mis, margin in probe)
    assert "| base-model samples |" in card and "| real val crops |" in card
    assert "--configfile config/demo-base.yaml config/demo-base-v.yaml\n" in card
    assert "featinv export-base --params params.yaml config/demo-base.yaml config/demo-base-v.yaml " in card
