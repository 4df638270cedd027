"""Online training views (controlnet.train.augment.mode: online): the crops, the pixels both sides see,
and exact resumption after kill -9."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import featinv, finish, kill_at_checkpoint
from featinv.config import section
from featinv.diffusion.online import OnlineViews, crop_box, online_view
from test_diffusion import PROMPT, TINY_BASE, TRAIN

AUGMENT = {"mode": "online", "size": 32, "scale": [0.08, 1.0], "ratio": [0.75, 4 / 3], "hflip": True, "vflip": True}


def test_crop_boxes_are_drawn_as_random_resized_crop_draws_them():
    areas, aspects = [], []
    for i in range(400):
        left, top, right, bottom = crop_box(200, 150, (0.08, 1.0), (0.75, 4 / 3), np.random.default_rng([0, i]))
        assert 0 <= left < right <= 200 and 0 <= top < bottom <= 150
        areas.append((right - left) * (bottom - top) / (200 * 150))
        aspects.append((right - left) / (bottom - top))
    assert 0.07 < min(areas) and max(areas) <= 1.0 and np.mean(areas) > 0.3
    assert 0.7 < min(aspects) and max(aspects) < 1.42  # within the ratio range, up to rounding
    assert crop_box(200, 150, (0.08, 1.0), (0.75, 4 / 3), np.random.default_rng([0, 5])) == \
        crop_box(200, 150, (0.08, 1.0), (0.75, 4 / 3), np.random.default_rng([0, 5]))
    # No try fits a 1000 x 10 strip at aspect <= 4/3: the central crop of the clamped aspect, as torchvision.
    assert crop_box(1000, 10, (0.9, 1.0), (0.75, 4 / 3), np.random.default_rng(0)) == (493, 0, 506, 10)


def test_each_step_draws_its_own_views_and_both_sides_see_the_same_square(demo_shards):
    """The hint (the backbone's map of the view) and the target (the codec's encoding of the same view at
    the diffusion resolution) come from one square; a step's views are a function of (seed, step, row)."""
    from featinv.backbones import create_backbone
    from featinv.data.shards import index_split, read_image
    from featinv.data.target_view import TargetView
    from featinv.diffusion.base import create_demo_base

    augment = section("controlnet.train.augment", AUGMENT)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    a, b = online_view(img, augment, 0, 3, 7), online_view(img, augment, 0, 3, 7)
    assert a.size == (32, 32) and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(online_view(img, augment, 0, 4, 7)))  # another step
    base = create_demo_base(section("diffusion.base", TINY_BASE))
    lite0 = create_backbone("tf_efficientnet_lite0", input_size=64)
    index = index_split(demo_shards, "train", views=False)
    views = OnlineViews(index, lite0, base.codec, base.resolution, "unpooled", augment, seed=0)
    rows = np.array([0, 5, 11])
    batch = views.get(rows, step=2)
    assert tuple(batch["latents"].shape) == (3, *base.latent_shape) and tuple(batch["cond"].shape) == (3, 1280, 2, 2)
    for i, r in enumerate(rows):
        view = online_view(read_image(index[r]), augment, 0, 2, int(r))
        torch.testing.assert_close(base.codec.decode(batch["latents"][i:i + 1])[0], TargetView(16)(view),
                                   atol=1e-5, rtol=0)  # the patch codec is lossless
        with torch.no_grad():
            fmap = lite0.spatial(lite0.preprocessing.transform("resize")(view)[None])
        torch.testing.assert_close(batch["cond"][i:i + 1], fmap, atol=1e-4, rtol=1e-4)
    assert not torch.equal(views.get(rows, step=3)["cond"], batch["cond"])
    pooled = OnlineViews(index, lite0, base.codec, base.resolution, "pooled", augment, seed=0).get(rows, step=2)
    torch.testing.assert_close(pooled["cond"], batch["cond"].mean((2, 3)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["unpooled"])
def test_killed_online_training_resumes_to_the_same_weights(demo_shards, tmp_path, variant):
    from featinv.diffusion.base import create_demo_base

    create_demo_base(section("diffusion.base", TINY_BASE)).save(tmp_path / "base")
    cfg = {"diffusion": {"prompt": PROMPT, "device": "cpu", "targets": {"batch_size": 8, "num_workers": 0},
                         "base": TINY_BASE},
           "controlnet": {"variants": ["unpooled", "pooled"], "encoder": {"hidden": 8, "depth": 1},
                          "train": {**TRAIN, "steps": 24, "batch_size": 4, "checkpoint_every": 6, "augment": AUGMENT}},
           "backbones": {"names": ["tf_efficientnet_lite0"], "weights": {}, "input_size": {"tf_efficientnet_lite0": 64}}}
    args = lambda out: ["train-controlnet", "--base", str(tmp_path / "base"), "--shards", str(demo_shards),
                        "--backbone", "tf_efficientnet_lite0", "--variant", variant, "--out", str(out),
                        "--loss-csv", str(out) + ".csv", "--config", json.dumps(cfg)]
    finish(featinv(*args(tmp_path / "whole")))
    kill_at_checkpoint(featinv(*args(tmp_path / "killed")), tmp_path / "killed.ckpt", 12)
    (tmp_path / "killed.csv").unlink(missing_ok=True)
    finish(featinv(*args(tmp_path / "killed")))
    for part in ("controlnet/diffusion_pytorch_model.safetensors", "encoder/diffusion_pytorch_model.safetensors"):
        a, b = load_file(tmp_path / "whole" / part), load_file(tmp_path / "killed" / part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "killed" / "training.json").read_text())["resumed_from"] >= 12
    assert (tmp_path / "killed.csv").read_text() == (tmp_path / "whole.csv").read_text()
    meta = json.loads((tmp_path / "whole" / "featinv.json").read_text())
    assert meta["backbone"] == "tf_efficientnet_lite0" and meta["fmap_shape"] == [1280, 2, 2]
    # the one params hash (as the job's stamp records it: tests/test_workflow.py), in meta and card
    from featinv import config
    from featinv.cards import read_card
    from featinv.cli import VERBS
    from featinv.provenance import params_hash

    typed = config.sections(cfg, *VERBS["train_controlnet"].sections)
    assert meta["params_hash"] == read_card(tmp_path / "whole" / "README.md")[0]["featinv"]["params_hash"] == params_hash(typed)
