"""FeatInv diffusion parts on tiny random-weight configs (nothing from a hub)."""


import numpy as np
import pytest
import torch

from featinv.config import section
from featinv import rowstore
from featinv.diffusion.base import BaseModelError, create_demo_base, load_base
from featinv.diffusion.codec import PatchCodec, VaeCodec
from featinv.diffusion.controlnet import FeatureControlNet
from featinv.diffusion.encoder import FeatureConditioningEncoder
from featinv.diffusion.sample import denoise, make_scheduler, sample_store

TRAIN = {"steps": 40, "batch_size": 8, "lr": 2e-3, "weight_decay": 0.0, "max_grad_norm": 1.0, "drop_prob": 0.15,
         "lr_warmup_steps": 0, "lr_schedule": "constant", "checkpoint_every": 10, "seed": 0, "mixed_precision": "fp32",
         "timesteps": "uniform", "snr_gamma": 0.0, "loss": "prediction",
         "augment": {"mode": "views", "size": 32, "scale": [0.08, 1.0], "ratio": [0.75, 1.3333], "hflip": True,
                     "vflip": True}}
TINY_BASE = {"source": "train", "resolution": 16, "patch": 2, "block_out_channels": [16, 32], "layers_per_block": 1,
             "attention_heads": 1, "text_hidden": 16, "text_layers": 1, "prediction_type": "sample",
             "beta_schedule": "scaled_linear", "seed": 0,
             "train": TRAIN}
SAMPLING = {"split": "val", "scheduler": "ddim", "steps": 4, "guidance_scale": 1.75, "hint_guidance": 1.0, "control_strength": {},
            "tuning": "fixed", "tune": {"maps": 4, "control_strength": [1.0], "guidance_scale": [1.75], "seed": 0},
            "samples_per_map": 2, "seed": 100, "batch_size": 0, "precision": "auto", "rows_per_shard": 6, "preview": 4}
PROMPT = "a high-quality, detailed, and professional image"


@pytest.fixture(scope="module")
def base():
    return create_demo_base(section("diffusion.base", TINY_BASE))


def make_net(base, channels=24, fmap=(3, 3), pooled=False, seed=0):
    torch.manual_seed(seed)
    return FeatureControlNet.from_unet(base.unet, in_channels=channels, fmap_size=fmap, hidden=16, depth=2,
                                       pooled=pooled, meta={"backbone": "toy", "variant": "pooled" if pooled else "unpooled"})


def randomise(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_fresh_controlnet_leaves_the_base_unet_exactly_unchanged(base):
    net = make_net(base)
    x = torch.randn(2, *base.latent_shape)
    t = torch.tensor([10, 700])
    text = base.prompt_embeddings(PROMPT)[[0, 1]]
    cond = torch.randn(2, 24, 3, 3)
    with torch.no_grad():
        down, mid = net(x, t, text, cond)
        plain = base.unet(x, t, encoder_hidden_states=text).sample
        controlled = base.unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                               mid_block_additional_residual=mid).sample
    assert len(down) == len(net.controlnet.controlnet_down_blocks)  # a residual for every down block
    assert all(torch.count_nonzero(r) == 0 for r in down) and torch.count_nonzero(mid) == 0
    assert torch.equal(plain, controlled)


def test_the_hint_at_more_levels_starts_as_the_base_and_reaches_every_named_block(base, tmp_path):
    """controlnet.encoder.levels: a fresh multi-level ControlNet still leaves the base unchanged (every
    added path starts at zero); once its level convolutions are non-zero, the hint changes the input of
    down block 1 (and so the residuals from there on) while down block 0's residuals, reached only
    through the input hint, stay what the one-level model gives; it saves and loads with its levels."""
    net = make_net(base)
    torch.manual_seed(0)
    multi = FeatureControlNet.from_unet(base.unet, in_channels=24, fmap_size=(3, 3), hidden=16, depth=2, pooled=False,
                                        meta={"backbone": "toy", "variant": "unpooled"}, levels=2)
    assert [tuple(c.weight.shape[:2]) for c in multi.encoder.level_convs] == [(16, 16)]  # widths [16, 32]: block 0's
    x, t = torch.randn(2, *base.latent_shape), torch.tensor([10, 700])
    text, cond = base.prompt_embeddings(PROMPT)[[0, 1]], torch.randn(2, 24, 3, 3)
    with torch.no_grad():
        down, mid = multi(x, t, text, cond)
    assert all(torch.count_nonzero(r) == 0 for r in down) and torch.count_nonzero(mid) == 0
    randomise(multi, 5)  # every weight, the level convolution included
    one = FeatureControlNet(multi.controlnet, FeatureConditioningEncoder(**{**multi.encoder.config,
                                                                           "level_channels": ()}), {})
    one.encoder.load_state_dict({k: v for k, v in multi.encoder.state_dict().items() if "level" not in k})
    with torch.no_grad():
        d_multi, m_multi = multi(x, t, text, cond)
        d_one, m_one = one(x, t, text, cond)
    blocks0 = len(multi.controlnet.down_blocks[0].resnets) + 1 + 1  # conv_in's residual, its resnets, its downsampler
    for a, b in zip(d_multi[:blocks0], d_one[:blocks0]):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(d_multi[-1], d_one[-1]) and not torch.allclose(m_multi, m_one)
    multi.save_pretrained(tmp_path / "m")
    loaded = FeatureControlNet.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, text, cond)[1], m_multi)
    with pytest.raises(ValueError, match="between 1 and the UNet's 2 down blocks"):
        FeatureControlNet.from_unet(base.unet, 24, (3, 3), 16, 2, False, {}, levels=3)


def test_zero_last_off_gives_a_small_random_last_layer(base):
    torch.manual_seed(0)
    net = FeatureControlNet.from_unet(base.unet, 24, (3, 3), 16, 2, False, {}, zero_last=False)
    last = net.encoder.net[-1].weight
    assert torch.count_nonzero(last) == last.numel() and 5e-4 < float(last.std()) < 2e-3
    with torch.no_grad():  # the ControlNet's own zero convolutions still keep the base unchanged at the start
        down, mid = net(torch.randn(2, *base.latent_shape), torch.tensor([10, 700]),
                        base.prompt_embeddings(PROMPT)[[0, 1]], torch.randn(2, 24, 3, 3))
    assert all(torch.count_nonzero(r) == 0 for r in down) and torch.count_nonzero(mid) == 0


@pytest.mark.parametrize("shape", [(2048, 7, 7), (1024, 12, 12), (768, 14, 14), (1280, 9, 9), (320, 2, 2)],
                         ids=["resnet50", "swinv2", "vit", "efficientnet", "convnext"])
def test_conditioning_shapes(shape):
    for pooled in (False, True):
        enc = FeatureConditioningEncoder(in_channels=shape[0], fmap_size=shape[1:], grid=32, hidden=8, depth=2,
                                         out_channels=320, pooled=pooled)
        x = torch.randn(2, shape[0]) if pooled else torch.randn(2, *shape)
        assert tuple(enc(x).shape) == (2, 320, 32, 32)


def test_pooled_vector_is_copied_over_the_grid():
    enc = FeatureConditioningEncoder(in_channels=4, fmap_size=(3, 3), grid=8, hidden=4, depth=1, out_channels=2, pooled=True)
    randomise(enc)
    v = torch.randn(1, 4)
    out = enc(v)
    # Away from the zero-padded border every position sees the same input, so the same output.
    inner = out[0, :, 2:-2, 2:-2]
    torch.testing.assert_close(inner, inner[:, :1, :1].expand_as(inner))


def test_wrong_conditioning_input_is_a_clear_error():
    enc = FeatureConditioningEncoder(in_channels=1280, fmap_size=(7, 7), grid=16, hidden=8, depth=2, out_channels=32)
    with pytest.raises(ValueError, match=r"trained on \(B, 1280, 7, 7\)"):
        enc(torch.randn(1, 2048, 7, 7))
    with pytest.raises(ValueError, match="differs from the trained grid"):
        enc(torch.randn(1, 1280, 9, 9))
    pooled = FeatureConditioningEncoder(in_channels=1280, fmap_size=(7, 7), grid=16, hidden=8, depth=2,
                                        out_channels=32, pooled=True)
    with pytest.raises(ValueError, match="backbone.pooled"):
        pooled(torch.randn(1, 1280, 7, 7))


def test_unconditional_branch_keeps_the_hint(base):
    net = make_net(base)
    seen, encoded = [], []
    real, real_encoder = net.forward, net.encoder.forward

    def spy(x, t, text, cond=None, scale=1.0, hint=None):
        seen.append(hint.clone())
        return real(x, t, text, cond, scale, hint=hint)

    def spy_encoder(cond):
        encoded.append(cond.clone())
        return real_encoder(cond)

    net.forward, net.encoder.forward = spy, spy_encoder
    cond = torch.randn(3, 24, 3, 3)
    text = base.prompt_embeddings(PROMPT)
    denoise(base, net, cond, torch.randn(3, *base.latent_shape), text, make_scheduler("ddim", base), 2, 1.75, 1.0)
    assert len(encoded) == 1  # each map is encoded once, not at every step
    torch.testing.assert_close(encoded[0][:3], cond)
    with torch.no_grad():
        hint = real_encoder(cond)
    assert len(seen) == 2
    for h in seen:  # padded to 8 rows: [hint, hint, padding]
        torch.testing.assert_close(h[:6], torch.cat([hint, hint]))


def test_hint_guidance_extrapolates_from_the_base_towards_the_controlled_estimate(base):
    """sampling.hint_guidance s: eps_base + s (eps_ctrl - eps_base) at every step (text guidance off here):
    s = 1 is the plain controlled sampler bit for bit, s = 0 the base model alone, and one step at s = 3
    moves the image three times as far from the base's as s = 1 does (DDIM's step is affine in eps)."""
    net = make_net(base)
    randomise(net.encoder, 2)
    randomise(net.controlnet, 3)
    cond, noise = torch.randn(3, 24, 3, 3), torch.randn(3, *base.latent_shape)
    text = base.prompt_embeddings(PROMPT)

    def run(s, steps=3, net=net, cond=cond):
        return denoise(base, net, cond, noise, text, make_scheduler("ddim", base, "trailing"), steps, 1.0, 1.0,
                       hint_guidance=s)

    assert torch.equal(run(1.0), denoise(base, net, cond, noise, text, make_scheduler("ddim", base, "trailing"), 3, 1.0,
                                         1.0))
    torch.testing.assert_close(run(0.0), run(1.0, net=None, cond=None), rtol=0, atol=1e-5)
    assert (run(1.0) - run(0.0)).abs().max() > 1e-3  # the hint does move the image
    # One step from t = 999: the image is the x0 estimate, affine in the model's output (where the
    # decoder's clamp to [-1, 1] does not cut it).
    base_img, one, three = run(0.0, steps=1), run(1.0, steps=1), run(3.0, steps=1)
    inside = (base_img.abs() < 0.999) & (one.abs() < 0.999) & (three.abs() < 0.999)
    assert inside.float().mean() > 0.5
    torch.testing.assert_close((three - base_img)[inside], 3 * (one - base_img)[inside], rtol=0, atol=1e-4)


def write_features(path, n=10, channels=24, fmap=(3, 3), seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"features": ((channels, *fmap), "float16", 0), "pooled": ((channels,), "float16", 0), "keys": ((), "str", None)}
    group, _ = rowstore.open_or_resume(path, n, arrays, 4, 4, {"backbone": "toy", "fmap_shape": [channels, *fmap],
                                                                "layer": "toy", "weights_source": "toy"})
    feats = rng.standard_normal((n, channels, *fmap)).astype(np.float16)
    group["features"][:] = feats
    group["pooled"][:] = feats.astype(np.float32).mean((2, 3)).astype(np.float16)
    group["keys"][:] = np.array([f"k/{i:03d}" for i in range(n)], dtype=object)
    group["done"][:] = True
    rowstore.finalize(path)


def test_sampling_is_batch_size_invariant_and_survives_save_and_reload(base, tmp_path, two_threads):
    # On two threads; on one, oneDNN's convolutions differ in the last bit between batch sizes here
    # (seen 2026-12-04), so this invariance is a property of the thread count too.
    net = make_net(base)
    randomise(net.encoder, 2)
    randomise(net.controlnet, 3)
    write_features(tmp_path / "f.zarr")
    outs = {}
    for bs, rows in ((1, 4), (3, 4), (10, 8)):  # sampling.batch_size and rows_per_shard: x-execution keys
        cfg = section("sampling", {**SAMPLING, "batch_size": bs, "rows_per_shard": rows})
        sample_store(base, net, tmp_path / "f.zarr", tmp_path / f"s{bs}.zarr", cfg, 1.0, PROMPT, device="cpu", progress=False)
        outs[bs] = rowstore.open_complete(tmp_path / f"s{bs}.zarr")["images"][:]
    assert outs[1].shape == (10, 2, 3, 16, 16)
    assert np.array_equal(outs[1], outs[3]) and np.array_equal(outs[1], outs[10])
    assert not np.array_equal(outs[1][:, 0], outs[1][:, 1])  # the two samples per map differ

    net.save_pretrained(tmp_path / "model")
    from diffusers import ControlNetModel

    plain = ControlNetModel.from_pretrained(tmp_path / "model" / "controlnet")  # loads as a stock ControlNet
    assert isinstance(plain, ControlNetModel)
    assert not list((tmp_path / "model").rglob("*.bin")) and list((tmp_path / "model").rglob("*.safetensors"))
    reloaded = FeatureControlNet.from_pretrained(tmp_path / "model")
    sample_store(base, reloaded, tmp_path / "f.zarr", tmp_path / "r.zarr", section("sampling", {**SAMPLING, "batch_size": 4}), 1.0, PROMPT,
                 device="cpu", progress=False)
    assert np.array_equal(rowstore.open_complete(tmp_path / "r.zarr")["images"][:], outs[1])


def test_base_model_saves_and_loads_in_the_diffusers_layout(base, tmp_path):
    base.save(tmp_path / "b")
    loaded = load_base(tmp_path / "b")
    assert isinstance(loaded.codec, PatchCodec) and loaded.resolution == 16
    for (k, v), (k2, v2) in zip(base.unet.state_dict().items(), loaded.unet.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    torch.testing.assert_close(loaded.prompt_embeddings(PROMPT), base.prompt_embeddings(PROMPT))


def test_attention_heads_set_the_head_count_and_must_divide_the_widths():
    two = create_demo_base(section("diffusion.base", {**TINY_BASE, "attention_heads": 2}))
    attn = [m for m in two.unet.modules() if type(m).__name__ == "Attention"]
    assert attn and all(m.heads == 2 for m in attn)  # diffusers' attention_head_dim is the head count
    with pytest.raises(ValueError, match=r"attention_heads=3 must divide every attention block's width \[32\]"):
        create_demo_base(section("diffusion.base", {**TINY_BASE, "attention_heads": 3}))


def test_paper_layout_with_a_vae_loads(tmp_path, base):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4)
    for part, module in (("unet", base.unet), ("text_encoder", base.text_encoder), ("tokenizer", base.tokenizer),
                         ("scheduler", base.noise_scheduler), ("vae", vae)):
        module.save_pretrained(tmp_path / "sd" / part)
    loaded = load_base(tmp_path / "sd", resolution=16)
    assert isinstance(loaded.codec, VaeCodec) and loaded.codec.factor == 2
    z = loaded.codec.encode(torch.rand(1, 3, 16, 16) * 2 - 1)
    assert tuple(z.shape) == (1, 4, 8, 8) and tuple(loaded.codec.decode(z).shape) == (1, 3, 16, 16)
    assert load_base(tmp_path / "sd").resolution == 16  # sample_size x VAE factor
    # A resolution whose latent grid is not the UNet's: stopped at load time, naming both numbers.
    with pytest.raises(BaseModelError, match=r"resolution 32 px / 2 px per latent = a 16\^2 latent grid, but its UNet "
                                             r"was built for 8\^2 \(sample_size\): set diffusion.base.resolution to 16"):
        load_base(tmp_path / "sd", resolution=32)


def test_missing_base_model_offline_names_what_to_supply(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BaseModelError) as err:
        load_base("lambdalabs/miniSD-diffusers")
    assert "lambdalabs/miniSD-diffusers" in str(err.value) and "diffusion.base.source" in str(err.value)
    assert "`hf download lambdalabs/miniSD-diffusers`" in str(err.value)  # today's Hugging Face CLI


def test_patch_codec_is_lossless():
    codec = PatchCodec(4)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = codec.encode(x)
    assert tuple(z.shape) == (2, 48, 4, 4)
    assert torch.equal(codec.decode(z), x)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("beta_schedule", ["scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_sampler_recovers_the_image_from_an_oracle_denoiser(prediction_type, beta_schedule, spacing):
    """A denoiser that knows x0 makes deterministic DDIM return x0 from any starting noise."""
    from types import SimpleNamespace

    base = create_demo_base(section("diffusion.base", {**TINY_BASE, "prediction_type": prediction_type, "beta_schedule": beta_schedule}))
    x0 = torch.rand(3, *base.latent_shape) * 2 - 1
    alphas = base.noise_scheduler.alphas_cumprod

    class Oracle(torch.nn.Module):
        def forward(self, x, t, encoder_hidden_states=None, **kw):
            a = alphas[t.long()].view(-1, 1, 1, 1)
            target = x0.repeat(x.shape[0] // 3 + 1, 1, 1, 1)[: x.shape[0]]
            eps = (x - a.sqrt() * target) / (1 - a).sqrt()
            out = {"epsilon": eps, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * target,
                   "sample": target}[prediction_type]
            return SimpleNamespace(sample=out)

    base.unet = Oracle()
    text = base.prompt_embeddings(PROMPT)
    out = denoise(base, None, None, torch.randn(3, *base.latent_shape), text, make_scheduler("ddim", base, spacing),
                  10, 1.75, 1.0)
    torch.testing.assert_close(out, base.codec.decode(x0), atol=1e-4, rtol=0)
    # started from x0 noised to an intermediate step (the ceiling probe's path): x0 again
    out = denoise(base, None, None, torch.randn(3, *base.latent_shape), text, make_scheduler("ddim", base, spacing),
                  10, 1.75, 1.0, start=x0, start_t=600)
    torch.testing.assert_close(out, base.codec.decode(x0), atol=1e-4, rtol=0)


def test_a_start_below_the_whole_schedule_is_refused(base):
    """(The start path itself is checked against the oracle denoiser above.)"""
    x0 = torch.rand(2, *base.latent_shape) * 2 - 1
    text = base.prompt_embeddings(PROMPT)
    noise = torch.randn(2, *base.latent_shape)
    with pytest.raises(ValueError, match="below the schedule"):
        denoise(base, None, None, noise, text, make_scheduler("ddim", base, "trailing"), 10, 1.0, 1.0,
                start=x0, start_t=50)


@pytest.mark.parametrize("solver", ["ddim", "unipc", "dpmsolver"])
def test_timestep_spacing_decides_where_the_solver_starts(base, solver):
    """trailing starts at the last training timestep (pure noise is t = 999); leading, Stable
    Diffusion's, at 1000 - 1000 / steps; every spacing ends at or near 0 and descends."""
    firsts = {}
    for spacing in ("leading", "trailing", "linspace"):
        sched = make_scheduler(solver, base, spacing)
        sched.set_timesteps(10)
        ts = [int(t) for t in sched.timesteps]
        assert ts == sorted(ts, reverse=True) and len(ts) == 10 and ts[-1] <= 100
        firsts[spacing] = ts[0]
    assert firsts == {"leading": 900, "trailing": 999, "linspace": 999}
    with pytest.raises(ValueError, match="unknown scheduler 'euler'"):
        make_scheduler("euler", base)


def test_control_strength_is_per_backbone_with_one_as_the_default():
    from featinv.diffusion.sample import control_strength

    sampling = section("sampling", {**SAMPLING, "control_strength": {"resnet50": 0.8}})
    assert control_strength(sampling, "resnet50") == 0.8
    assert control_strength(sampling, "convnext_base") == 1.0
    assert control_strength(sampling, "resnet50@layer3") == 0.8  # every layer of the backbone


def test_the_peer_pipeline_drives_the_same_components_to_the_same_images():
    """bench-diffusion's third column: diffusers' StableDiffusionControlNetPipeline (prepare_image
    overridden to pass the feature hint) over the same UNet, ControlNet and DDIM scheduler gives
    featinv's sampler's images: a fair peer, and a check of the sampler against diffusers' loop."""
    from featinv.diffusion.bench import peer_pipeline

    base = create_demo_base(section("diffusion.base", {**TINY_BASE, "prediction_type": "epsilon"}))
    net = make_net(base)
    randomise(net.controlnet, 3)
    text = base.prompt_embeddings(PROMPT)
    cond = torch.randn(1, 24, 3, 3, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, *base.latent_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = denoise(base, net, cond, noise, text, make_scheduler("ddim", base), 6, 1.75, 0.8)
        latents = peer_pipeline(base, net)(prompt_embeds=text[0:1], negative_prompt_embeds=text[1:2],
                                           image=net.encoder(cond), num_inference_steps=6, guidance_scale=1.75,
                                           controlnet_conditioning_scale=0.8, latents=noise.clone(),
                                           output_type="latent").images
    torch.testing.assert_close(base.codec.decode(latents), ours, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(ours, denoise(base, net, cond, noise, text, make_scheduler("ddim", base), 6, 1.75, 0.0),
                              atol=1e-3)  # the ControlNet matters in this check
