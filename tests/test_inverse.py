"""The deterministic inverse beside FeatInv, and the comparison and layer-study reports."""

import math

import numpy as np
import pytest
import torch
import yaml

from featinv import rowstore
from featinv.config import section
from featinv.diffusion.codec import PatchCodec
from featinv.diffusion.inverse import FeatureDecoder, invert_store, load_decoder, train_inverse
from featinv.metrics.comparison import comparison_markdown, comparison_rows, layer_rows
from test_diffusion import write_features

INVERSE = {"hidden": 16, "batch_size": 4, "train": {
    "steps": 150, "batch_size": 10, "lr": 1.0e-2, "weight_decay": 0.0, "max_grad_norm": 1.0, "lr_warmup_steps": 0,
    "lr_schedule": "constant", "checkpoint_every": 100, "seed": 0, "mixed_precision": "fp32", "views": "views"}}


@pytest.mark.parametrize("fmap, resolution, start", [((7, 7), 64, 8), ((9, 9), 256, 8), ((14, 14), 64, 16), ((3, 3), 16, 4)])
def test_decoder_reaches_the_resolution_from_the_nearest_power_of_two(fmap, resolution, start):
    decoder = FeatureDecoder(8, fmap, resolution, hidden=8)
    assert decoder.start == start
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in decoder.modules()) == round(math.log2(resolution / start))
    out = decoder(torch.randn(2, 8, *fmap))
    assert out.shape == (2, 3, resolution, resolution) and out.abs().max() <= 1
    with pytest.raises(ValueError, match=r"trained on \(B, 8, "):
        decoder(torch.randn(2, 9, *fmap))


def _targets(path, n=10, patch=4, resolution=16, seed=1):
    """A targets store whose images are smooth random colour fields (learnable from a map)."""
    rng = np.random.default_rng(seed)
    low = torch.from_numpy(rng.uniform(-1, 1, (n, 3, 2, 2)).astype(np.float32))
    images = torch.nn.functional.interpolate(low, size=(resolution, resolution), mode="bilinear", align_corners=False)
    latents = PatchCodec(patch).encode(images)
    group, _ = rowstore.open_or_resume(path, n, {"latents": (tuple(latents.shape[1:]), "float16", 0),
                                                 "keys": ((), "str", None)}, 4, 4, {"resolution": resolution})
    group["latents"][:] = latents.numpy().astype(np.float16)
    group["keys"][:] = np.array([f"k/{i:03d}" for i in range(n)], dtype=object)
    group["done"][:] = True
    rowstore.finalize(path)
    return images


def test_the_inverse_learns_its_training_pairs_and_writes_a_sample_store(tmp_path):
    """Pixel MSE: after training, the decoder's reconstructions of its training maps sit far closer to
    their own targets than to the mean image, and far closer to their own than to another row's; the
    reconstructions are a sample store (one sample per map, the keys of the features) that the metrics
    read like FeatInv's, and the directory loads without unpickling and carries a card."""
    write_features(tmp_path / "f.zarr")
    images = _targets(tmp_path / "t.zarr")
    cfg = section("inverse", INVERSE)
    summary = train_inverse(tmp_path / "f.zarr", tmp_path / "t.zarr", PatchCodec(4), cfg, tmp_path / "inv",
                            tmp_path / "loss.csv", "test", device="cpu", progress=False)
    assert summary["steps"] == 150 and summary["final_loss"] < 0.05
    decoder, meta = load_decoder(tmp_path / "inv")
    assert meta["variant"] == "inverse" and meta["backbone"] == "toy" and meta["resolution"] == 16
    assert not list((tmp_path / "inv").rglob("*.bin")) and (tmp_path / "inv" / "README.md").exists()
    front = yaml.safe_load((tmp_path / "inv" / "README.md").read_text().split("---\n")[1])
    assert front["featinv"]["kind"] == "deterministic-inverse" and front["featinv"]["steps"] == 150

    invert_store(tmp_path / "inv", tmp_path / "f.zarr", tmp_path / "s.zarr", batch_size=3, device="cpu", progress=False)
    group = rowstore.open_complete(tmp_path / "s.zarr")
    assert group["images"].shape == (10, 1, 3, 16, 16) and group.attrs["model"]["variant"] == "inverse"
    assert list(group["keys"][:]) == list(rowstore.open_complete(tmp_path / "f.zarr")["keys"][:])
    recon = group["images"][:, 0].astype(np.float32) / 127.5 - 1
    real = images.numpy()
    own = ((recon - real) ** 2).mean()
    mean_image = ((real - real.mean(0, keepdims=True)) ** 2).mean()
    other = ((recon - np.roll(real, 5, axis=0)) ** 2).mean()
    assert own < 0.2 * mean_image and own < 0.1 * other
    with torch.no_grad():  # the store holds the decoder's output, rounded to uint8
        direct = decoder(torch.from_numpy(rowstore.open_complete(tmp_path / "f.zarr")["features"][:].astype(np.float32)))
    np.testing.assert_allclose(recon, direct.numpy(), atol=1 / 127.5 + 1e-6)


def test_inverse_execution_keys_change_nothing(tmp_path):
    """inverse.batch_size and inverse.train.checkpoint_every (x-execution keys) change neither the
    trained weights nor the reconstructions, bit for bit."""
    write_features(tmp_path / "f.zarr")
    _targets(tmp_path / "t.zarr")
    weights = {}
    for every in (7, 1000):
        cfg = section("inverse", {**INVERSE, "train": {**INVERSE["train"], "steps": 20, "checkpoint_every": every}})
        train_inverse(tmp_path / "f.zarr", tmp_path / "t.zarr", PatchCodec(4), cfg, tmp_path / f"inv{every}",
                      tmp_path / f"loss{every}.csv", "test", device="cpu", progress=False)
        weights[every] = load_decoder(tmp_path / f"inv{every}")[0].state_dict()
    assert all(torch.equal(weights[7][k], weights[1000][k]) for k in weights[7])
    images = {}
    for batch in (3, 10):
        invert_store(tmp_path / "inv7", tmp_path / "f.zarr", tmp_path / f"s{batch}.zarr", batch_size=batch,
                     device="cpu", progress=False)
        images[batch] = rowstore.open_complete(tmp_path / f"s{batch}.zarr")["images"][:]
    assert np.array_equal(images[3], images[10])


def _stat(v):
    return {"mean": v, "ci_low": v - 0.1, "ci_high": v + 0.1}


def _metrics(variant, cos, top5, mse, other, source="bb"):
    oracle = {"cosine_sim": _stat(0.9), "top5": _stat(1.0), "top1": _stat(1.0), "pixel_mse": _stat(0.0),
              "cosine_sim_by": {source: _stat(0.9), "bb2": _stat(0.8)}}
    return {"model": {"backbone": source, "variant": variant, "fmap_shape": [8, 2, 2]}, "split": "val", "confidence": 0.95,
            "n_images": 4, "cosine_sim": _stat(cos),
            "match": {"bb": {"top5": _stat(0.5), "top1": _stat(0.25)}, source: {"top5": _stat(top5), "top1": _stat(top5 / 2)}},
            "pixel_mse": _stat(mse), "fid": {"value": 100.0 + cos}, "cosine_sim_by": {source: _stat(cos), "bb2": _stat(other)},
            "cosine_sim_mismatched": _stat(cos / 2), "cosine_sim_unrelated": 0.1,
            "oracle_copy": oracle, "oracle_nearest_train": {**oracle, "cosine_sim": _stat(0.4)},
            "cosine_sim_per_map": {"keys": ["a", "b"], "values": [cos, cos]}}


def test_comparison_rows_put_every_method_and_oracle_on_the_same_measures():
    metrics = [_metrics("pooled", 0.2, 0.1, 0.09, 0.15), _metrics("inverse", 0.3, 0.2, 0.03, 0.25),
               _metrics("unpooled", 0.4, 0.3, 0.06, 0.2)]
    header, rows = comparison_rows(metrics)
    assert header[:5] == ["method", "variant", "cosine_sim", "cosine_sim_ci95_low", "cosine_sim_ci95_high"]
    assert header[-2:] == ["fid", "cosine_sim[bb2]"]
    assert [r[:2] for r in rows] == [["FeatInv (spatial map)", "unpooled"], ["FeatInv (pooled)", "pooled"],
                                     ["deterministic inverse", "inverse"], ["copy (oracle)", "oracle"],
                                     ["nearest train (oracle)", "oracle"]]
    unpooled, inverse, copy = rows[0], rows[2], rows[3]
    assert unpooled[2] == 0.4 and unpooled[5] == 0.3 and unpooled[8] == 0.15 and unpooled[11] == 0.06
    assert unpooled[-2:] == [100.4, 0.2] and inverse[11] == 0.03 and inverse[-1] == 0.25
    assert copy[2] == 0.9 and copy[11] == 0.0 and math.isnan(copy[-2]) and copy[-1] == 0.8
    md = comparison_markdown(header, rows, "bb", "demo")
    assert "| deterministic inverse | 0.300 [0.200, 0.400] | 0.200 [0.100, 0.300] |" in md
    assert "| copy (oracle) | 0.900 [0.800, 1.000] |" in md and "| — | 0.800 |" in md
    with pytest.raises(ValueError, match="one source's models"):
        comparison_rows([*metrics, _metrics("pooled", 0.2, 0.1, 0.1, 0.1, source="bb@blocks.1")])


def test_layer_rows_score_each_layer_on_its_own_map_and_on_the_last():
    last = _metrics("unpooled", 0.4, 0.3, 0.06, 0.2)
    deep = _metrics("unpooled", 0.6, 0.2, 0.05, 0.2, source="bb@blocks.1")
    deep["cosine_sim_by"]["bb"] = _stat(0.35)  # the intermediate model's reconstructions on bb's last map
    header, rows = layer_rows([deep, last])
    assert header[1] == "layer" and [r[1] for r in rows] == ["last", "blocks.1"]
    col = {name: i for i, name in enumerate(header)}
    assert rows[0][col["cosine_sim"]] == 0.4 and rows[0][col["cosine_sim_on_last"]] == 0.4
    assert rows[1][col["cosine_sim"]] == 0.6 and rows[1][col["cosine_sim_on_last"]] == 0.35
    assert rows[1][col["top5_match"]] == 0.2 and rows[1][col["top5_match_on_last"]] == 0.5
    assert rows[1][col["cosine_sim_mismatched"]] == 0.3 and rows[1][col["fmap_shape"]] == "8x2x2"
    del deep["cosine_sim_by"]["bb"]
    with pytest.raises(ValueError, match="not scored on bb's last map"):
        layer_rows([deep, last])
