"""Training lowers the loss, and a run killed with SIGKILL resumes to the same weights."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import featinv, finish, kill_at_checkpoint
from featinv.config import section
from featinv import rowstore
from featinv.backbones import create_backbone
from featinv.cards import read_card
from featinv.diffusion.codec import PatchCodec
from featinv.diffusion.recipes import cached_rows, train_base, train_controlnet
from featinv.features.extract import extract
from test_diffusion import PROMPT, TINY_BASE, TRAIN

CN = {"variants": ["unpooled", "pooled"], "encoder": {"hidden": 16, "depth": 2},
      "train": {**TRAIN, "steps": 150, "lr": 1e-3, "checkpoint_every": 1000}}


def losses(csv_path):
    rows = Path(csv_path).read_text().splitlines()[1:]
    return np.array([float(r.split(",")[1]) for r in rows])


def test_targets_are_the_central_square_in_pixel_space(demo_targets, demo_shards):
    from featinv.data.shards import index_split, read_image
    from featinv.data.target_view import TargetView

    group = rowstore.open_complete(demo_targets)
    entry = index_split(demo_shards, "train")[4]
    expected = TargetView(16)(read_image(entry))
    stored = PatchCodec(2).decode(torch.from_numpy(group["latents"][4:5].astype(np.float32)))[0]
    assert list(group["keys"][:])[4] == entry.key
    torch.testing.assert_close(stored, expected, atol=2e-3, rtol=0)  # float16 storage


def test_target_execution_keys_leave_the_latents_unchanged(demo_targets, demo_shards, tmp_path):
    """diffusion.targets.batch_size / num_workers and diffusion.device (x-execution keys) decide how
    targets are encoded, not what: the same latents, bit for bit."""
    from featinv.diffusion.targets import encode_targets

    encode_targets(PatchCodec(2), "patch2", demo_shards, "train", tmp_path / "t.zarr", 16, batch_size=5,
                   num_workers=1, device="auto", rows_per_shard=8, rows_per_chunk=4, progress=False)
    a, b = rowstore.open_complete(demo_targets), rowstore.open_complete(tmp_path / "t.zarr")
    assert np.array_equal(a["latents"][:], b["latents"][:]) and list(a["keys"][:]) == list(b["keys"][:])


def test_base_training_lowers_the_loss(demo_targets, tmp_path):
    cfg = section("diffusion.base", {**TINY_BASE, "train": {**TRAIN, "steps": 200, "checkpoint_every": 1000}})
    summary = train_base(cfg, PROMPT, demo_targets, tmp_path / "base", tmp_path / "loss.csv", "test", device="cpu", progress=False)
    curve = losses(tmp_path / "loss.csv")
    assert len(curve) == 200 and summary["steps"] == 200
    assert curve[-30:].mean() < 0.7 * curve[:30].mean()
    assert (tmp_path / "base" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert not (tmp_path / "base.ckpt").exists()  # checkpoints are removed once the model is saved


def test_cosine_lr_schedule_decays_to_zero_at_the_last_step(demo_targets, tmp_path):
    cfg = section("diffusion.base", {**TINY_BASE, "train": {**TRAIN, "steps": 20, "lr": 2e-3, "lr_warmup_steps": 4, "lr_schedule": "cosine",
                                  "checkpoint_every": 1000}})
    train_base(cfg, PROMPT, demo_targets, tmp_path / "base", tmp_path / "loss.csv", "test", device="cpu", progress=False)
    rows = Path(tmp_path / "loss.csv").read_text().splitlines()[1:]
    lr = {int(r.split(",")[0]): float(r.split(",")[2]) for r in rows}  # the LR after each step
    assert lr[2] == pytest.approx(2e-3 * 2 / 4, rel=1e-3)  # linear warm-up
    assert lr[12] == pytest.approx(1e-3, rel=1e-3)  # half-way through the decay: half the peak
    assert lr[20] == pytest.approx(0.0, abs=1e-9)


def held_out_loss(base, net, features, targets, n=36, seed=7):
    """Diffusion loss on a fixed batch (fixed noise and timesteps), with the ControlNet's residuals."""
    from featinv.diffusion.train import diffusion_loss

    g = torch.Generator().manual_seed(seed)
    lat = torch.from_numpy(rowstore.open_complete(targets)["latents"][:n].astype(np.float32))
    cond = torch.from_numpy(rowstore.open_complete(features)["features"][:n].astype(np.float32))
    noise = torch.randn(lat.shape, generator=g)
    t = torch.randint(100, 900, (n,), generator=g)
    text = base.prompt_embeddings(PROMPT)[0:1].expand(n, -1, -1)
    with torch.no_grad():
        return diffusion_loss(base.unet, base.noise_scheduler, lat, text, noise, t,
                              residuals=lambda x, tt, txt: net(x, tt, txt, cond)).item()


def test_controlnet_training_lowers_the_loss(demo_targets, demo_shards, tmp_path):
    from featinv.diffusion.base import load_base
    from featinv.diffusion.controlnet import FeatureControlNet

    train_base(section("diffusion.base", {**TINY_BASE, "train": {**TRAIN, "steps": 100}}), PROMPT, demo_targets, tmp_path / "base",
               tmp_path / "bl.csv", "test", device="cpu", progress=False)
    lite0 = create_backbone("tf_efficientnet_lite0")
    extract(lite0, demo_shards, "train", tmp_path / "f.zarr", batch_size=16, num_workers=0, device="cpu",
            rows_per_shard=16, rows_per_chunk=8, progress=False)
    base = load_base(tmp_path / "base")
    data, attrs, _ = cached_rows(tmp_path / "f.zarr", demo_targets, "unpooled",
                                 section("controlnet", CN).train.augment.mode == "none")
    train_controlnet(base, str(tmp_path / "base"), data, attrs, "unpooled", section("controlnet", CN), PROMPT,
                     tmp_path / "cn", tmp_path / "cn.csv", "0123abcd", device="cpu", progress=False)
    base = load_base(tmp_path / "base")
    trained = FeatureControlNet.from_pretrained(tmp_path / "cn")
    torch.manual_seed(CN["train"]["seed"])
    fresh = FeatureControlNet.from_unet(base.unet, 1280, (7, 7), 16, 2, False, {})
    before = held_out_loss(base, fresh, tmp_path / "f.zarr", demo_targets)
    after = held_out_loss(base, trained, tmp_path / "f.zarr", demo_targets)
    assert after < 0.9 * before, (before, after)
    meta = json.loads((tmp_path / "cn" / "featinv.json").read_text())
    assert meta["backbone"] == "tf_efficientnet_lite0" and meta["variant"] == "unpooled"
    assert meta["fmap_shape"] == [1280, 7, 7] and meta["base_model"] == str(tmp_path / "base")
    assert meta["input_size"] == 224 and meta["view"] == "eval_transform"
    # its model card: Hugging Face front matter that agrees with the meta and the training summary
    front, body = read_card(tmp_path / "cn" / "README.md")
    training = json.loads((tmp_path / "cn" / "training.json").read_text())
    assert front["library_name"] == "diffusers" and front["license"] == "other"
    assert front["base_model"] == meta["base_model"] and {"featinv", "controlnet", "unpooled"} <= set(front["tags"])
    facts = front["featinv"]
    assert {k: facts[k] for k in ("backbone", "layer", "variant", "fmap_shape", "view", "input_size",
                                  "weights_source")} == {k: meta[k] for k in ("backbone", "layer", "variant", "fmap_shape",
                                                                              "view", "input_size", "weights_source")}
    assert facts["steps"] == CN["train"]["steps"] == training["steps"]
    assert facts["params_hash"] == training["params_hash"] == meta["params_hash"] == "0123abcd"
    assert facts["final_loss"] == pytest.approx(training["final_loss"], abs=1e-5)
    assert facts["train_rows"] == rowstore.open_complete(tmp_path / "f.zarr")["keys"].shape[0]
    assert front["datasets"] == ["demo"]
    assert f"snakemake --cores all {(tmp_path / 'cn').as_posix()}" in body


def test_bf16_autocast_trains_on_cpu_deterministically(demo_targets, tmp_path):
    def weights(precision, name):  # one process per run, as every pipeline job (accelerate's state is per process)
        cfg = {"diffusion": {"prompt": PROMPT, "device": "cpu", "targets": {"batch_size": 8, "num_workers": 0},
                             "base": {**TINY_BASE, "train": {**TRAIN, "steps": 3, "mixed_precision": precision}}}}
        finish(featinv("train-base", "--targets", str(demo_targets), "--out", str(tmp_path / name), "--loss-csv",
                       str(tmp_path / f"{name}.csv"), "--config", json.dumps(cfg)))
        return load_file(tmp_path / name / "unet" / "diffusion_pytorch_model.safetensors")

    fp32, bf16, again = weights("fp32", "a"), weights("bf16", "b"), weights("bf16", "c")
    assert all(torch.equal(bf16[k], again[k]) for k in bf16)
    assert not all(torch.equal(fp32[k], bf16[k]) for k in fp32)  # autocast was applied on the CPU
    assert all(v.dtype == torch.float32 for v in bf16.values())  # master weights stay float32


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_killed_training_resumes_to_the_same_weights(demo_targets, tmp_path, precision):
    """A run killed at a checkpoint and resumed ends where an unbroken run ends; the unbroken run
    checkpoints only at its end, so checkpoint_every (an x-execution key) is shown not to change the
    weights either."""
    def cfg(every):
        train = {**TRAIN, "steps": 60, "checkpoint_every": every, "mixed_precision": precision}
        return {"diffusion": {"prompt": PROMPT, "device": "cpu", "targets": {"batch_size": 8, "num_workers": 0},
                              "base": {**TINY_BASE, "train": train}}}

    args = lambda out, every=10: ["train-base", "--targets", str(demo_targets), "--out", str(out), "--loss-csv",
                                  str(out) + ".csv", "--config", json.dumps(cfg(every))]
    finish(featinv(*args(tmp_path / "whole", 1000)))

    kill_at_checkpoint(featinv(*args(tmp_path / "killed")), tmp_path / "killed.ckpt", 20)
    assert not (tmp_path / "killed" / "unet").exists()
    # Snakemake deletes a rerun job's outputs first: the loss log must come back from the checkpoint.
    (tmp_path / "killed.csv").unlink(missing_ok=True)

    finish(featinv(*args(tmp_path / "killed")))
    a = load_file(tmp_path / "whole" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "killed" / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((tmp_path / "killed" / "training.json").read_text())
    assert summary["resumed_from"] >= 20
    assert summary["total_seconds"] > summary["seconds"]  # the time before the kill is counted
    assert losses(str(tmp_path / "killed") + ".csv").tolist() == losses(str(tmp_path / "whole") + ".csv").tolist()


def test_timestep_distributions():
    from featinv.diffusion.recipes import draw_timesteps

    gen = torch.Generator().manual_seed(0)
    uniform = draw_timesteps(gen, 20000, 1000, "uniform").float()
    cubic = draw_timesteps(gen, 20000, 1000, "cubic").float()
    for t in (uniform, cubic):
        assert t.min() >= 0 and t.max() <= 999
    # E[u T] = T/2; E[(1 - u^3) T] = 3T/4: cubic favours the noisy end.
    assert uniform.mean().item() == pytest.approx(500, rel=0.02)
    assert cubic.mean().item() == pytest.approx(750, rel=0.02)
    assert (cubic >= 500).float().mean().item() == pytest.approx(0.5 ** (1 / 3), abs=0.01)  # P(u^3 <= 1/2)
    with pytest.raises(ValueError, match="unknown timestep sampling"):
        draw_timesteps(gen, 4, 1000, "lognormal")


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weighting_is_the_capped_x0_loss(prediction_type):
    """With snr_gamma, each sample's loss is its x0 error weighted by min(SNR, gamma) (Hang et al. 2023)."""
    from diffusers import DDPMScheduler

    from featinv.diffusion.train import diffusion_loss, snr_weights

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                          prediction_type=prediction_type, clip_sample=False)
    t = torch.tensor([5, 300, 900])
    a = sched.alphas_cumprod[t]
    snr = a / (1 - a)
    assert snr[0] > 5 > snr[2]  # one clean step above the cap, one noisy below
    w = snr_weights(sched, t, 5.0)
    # The weight times the prediction's squared error = min(SNR, gamma) times the x0 error:
    # x0 error = (1-a)/a * eps error = (1-a) * v error, so w_eps = min(snr, g)/snr, w_v = min(snr, g)/(snr+1).
    x0_factor = {"epsilon": 1 / snr, "v_prediction": 1 / (snr + 1), "sample": torch.ones(3)}[prediction_type]
    assert torch.allclose(w, snr.clamp(max=5.0) * x0_factor, rtol=1e-5)

    gen = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 2, 2, generator=gen), torch.randn(3, 4, 2, 2, generator=gen)
    offset = torch.randn(3, 4, 2, 2, generator=gen)

    class Fixed(torch.nn.Module):  # a "UNet" whose prediction is the target plus a known error
        def forward(self, noisy, timesteps, encoder_hidden_states):
            from types import SimpleNamespace
            target = {"epsilon": noise, "v_prediction": sched.get_velocity(latents, noise, t), "sample": latents}
            return SimpleNamespace(sample=target[prediction_type] + offset)

    plain = diffusion_loss(Fixed(), sched, latents, None, noise, t)
    weighted = diffusion_loss(Fixed(), sched, latents, None, noise, t, snr_gamma=5.0)
    assert plain.item() == pytest.approx(offset.pow(2).mean().item(), rel=1e-5)
    assert weighted.item() == pytest.approx((w * offset.pow(2).flatten(1).mean(1)).mean().item(), rel=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_x0_loss_is_the_mse_of_the_implied_x0(prediction_type):
    """loss='x0' = MSE between the clean latents and the x0 the prediction implies, computed here from
    the DDPM relations x_t = sqrt(a) x0 + sqrt(1-a) eps and v = sqrt(a) eps - sqrt(1-a) x0."""
    from types import SimpleNamespace

    from diffusers import DDPMScheduler

    from featinv.diffusion.train import diffusion_loss

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                          prediction_type=prediction_type, clip_sample=False)
    t = torch.tensor([5, 300, 900])
    gen = torch.Generator().manual_seed(1)
    latents, noise, error = (torch.randn(3, 4, 2, 2, generator=gen) for _ in range(3))
    a = sched.alphas_cumprod[t].view(3, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
    target = {"epsilon": noise, "v_prediction": a.sqrt() * noise - (1 - a).sqrt() * latents,
              "sample": latents}[prediction_type]
    pred = target + 0.1 * error

    class Fixed(torch.nn.Module):
        def forward(self, noisy, timesteps, encoder_hidden_states):
            return SimpleNamespace(sample=pred)

    implied = {"epsilon": (noisy - (1 - a).sqrt() * pred) / a.sqrt(),
               "v_prediction": a.sqrt() * noisy - (1 - a).sqrt() * pred, "sample": pred}[prediction_type]
    expected = (implied - latents).pow(2).mean().item()
    got = diffusion_loss(Fixed(), sched, latents, None, noise, t, loss="x0").item()
    assert got == pytest.approx(expected, rel=1e-4)
    if prediction_type == "v_prediction":  # the skip: at t = 5 the implied x0 error is far below the v error
        assert (implied - latents)[0].abs().mean() < 0.2 * (pred - target)[0].abs().mean()
    with pytest.raises(ValueError, match="choose one"):
        diffusion_loss(Fixed(), sched, latents, None, noise, t, loss="x0", snr_gamma=5.0)
    with pytest.raises(ValueError, match="unknown loss"):
        diffusion_loss(Fixed(), sched, latents, None, noise, t, loss="l1")
