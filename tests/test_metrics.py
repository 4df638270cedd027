"""Metrics with known answers: cosine per position, top-k match, bootstrap, Fréchet distance,
pairwise MSE, Table 1/2 assembly, and a whole evaluation of reconstructions that equal the originals."""

import csv
import json

import numpy as np
import pytest
import torch

from featinv import rowstore
from featinv.backbones.registry import WeightsError
from featinv.config import section
from featinv.metrics import fid
from featinv.metrics.pairwise import pairwise_mse
from featinv.metrics.similarity import cosine_per_position, topk_match
from featinv.metrics.stats import bootstrap_ci, summarise
from featinv.metrics.tables import Interval, table1, table2, write_tables


def test_cosine_of_identical_and_orthogonal_maps():
    a = torch.randn(3, 8, 4, 5)
    np.testing.assert_allclose(cosine_per_position(a, a), 1.0, atol=1e-6)
    np.testing.assert_allclose(cosine_per_position(a, 2.5 * a), 1.0, atol=1e-6)
    np.testing.assert_allclose(cosine_per_position(a, -a), -1.0, atol=1e-6)
    x = torch.zeros(1, 2, 3, 3)
    x[:, 0] = 1.0
    y = torch.zeros(1, 2, 3, 3)
    y[:, 1] = 4.0
    np.testing.assert_allclose(cosine_per_position(x, y), 0.0, atol=1e-7)


def test_per_position_average_differs_from_flattened_cosine():
    # Position 0 agrees with a large norm, position 1 disagrees with a small norm.
    a = torch.tensor([[[[10.0, 1.0]], [[0.0, 0.0]]]])  # (1, C=2, H=1, W=2)
    b = torch.tensor([[[[10.0, 0.0]], [[0.0, 1.0]]]])
    per_position = cosine_per_position(a, b)[0]
    flattened = torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1))[0].item()
    assert per_position == pytest.approx(0.5)  # (1 + 0) / 2
    assert flattened == pytest.approx(100 / (np.sqrt(101) * np.sqrt(101)))  # ~0.990: dominated by position 0
    with pytest.raises(ValueError, match="one shape"):
        cosine_per_position(a, b[:, :1])


def test_topk_match_on_constructed_logits():
    logits = torch.tensor([[0.1, 0.9, 0.5, 0.3, 0.2, 0.0, 0.4],
                           [0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    ranking = logits.topk(5, dim=-1).indices.numpy()  # row 0: 1,2,6,3,4   row 1: 0,6,5,4,3
    reference = np.array([2, 1])
    np.testing.assert_array_equal(topk_match(reference, ranking, 5), [True, False])
    np.testing.assert_array_equal(topk_match(reference, ranking, 1), [False, False])
    np.testing.assert_array_equal(topk_match(np.array([1, 0]), ranking, 1), [True, True])
    with pytest.raises(ValueError, match="at least 5"):
        topk_match(reference, ranking[:, :3], 5)


def test_bootstrap_interval():
    assert bootstrap_ci(np.full(50, 0.3)) == pytest.approx((0.3, 0.3))
    rng = np.random.default_rng(1)
    values = rng.normal(1.0, 1.0, 400)
    lo, hi = bootstrap_ci(values, n_boot=2000)
    assert lo < values.mean() < hi
    # Width of a 95% interval of a mean: ~2 * 1.96 * sigma / sqrt(n) = 0.196.
    assert hi - lo == pytest.approx(2 * 1.96 / np.sqrt(400), rel=0.15)
    assert summarise(values)["mean"] == pytest.approx(values.mean())


def test_frechet_distance_known_answers():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (20000, 4))
    assert fid.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # N(0, I) vs N(mu, I): |mu|^2.   N(0, I) vs N(0, 4I): tr(I + 4I - 2 * 2I) = d.
    mu = np.array([1.0, 2.0, 0.0, -1.0])
    assert fid.frechet_distance(a, rng.normal(0, 1, (20000, 4)) + mu) == pytest.approx(6.0, rel=0.03)
    assert fid.frechet_distance(a, rng.normal(0, 2, (20000, 4))) == pytest.approx(4.0, rel=0.05)
    with pytest.raises(ValueError, match="one width"):
        fid.frechet_distance(a, a[:, :3])


def test_fid_inception_architecture_and_missing_weights(tmp_path, monkeypatch):
    model = fid.inception_model(pretrained=False)
    assert model(torch.rand(2, 3, 75, 75))[0].shape == (2, 2048, 1, 1)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match=r"pt_inception-2015-12-05-6726825d\.pth.*metrics\.fid\.inception_weights"):
        fid.inception_model()
    with pytest.raises(WeightsError, match="does not exist"):
        fid.inception_model(tmp_path / "nope.pth")
    # A weights file given by path is loaded into pytorch-fid's architecture.
    from pytorch_fid import inception as fid_inception

    torch.manual_seed(3)
    inner = fid._fid_blocks(fid_inception, fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None))
    torch.save(inner.state_dict(), tmp_path / "weights.pth")
    loaded = fid.inception_model(tmp_path / "weights.pth")
    torch.testing.assert_close(loaded.blocks[0][0].conv.weight, inner.Conv2d_1a_3x3.conv.weight)
    torch.testing.assert_close(loaded.blocks[3][2].branch_pool.conv.weight, inner.Mixed_7c.branch_pool.conv.weight)


def test_pairwise_mse_known_answer():
    versions = np.stack([np.full((2, 3, 4, 4), v) for v in (0.0, 1.0, 3.0)])  # V=3, N=2
    np.testing.assert_allclose(pairwise_mse(versions), [14 / 3, 14 / 3])  # (1 + 9 + 4) / 3
    with pytest.raises(ValueError, match="two versions"):
        pairwise_mse(versions[:1])


def _fake_metrics(backbone, variant, cos, top5, top1, evaluators):
    stat = lambda v: {"mean": v, "ci_low": v - 0.1, "ci_high": v + 0.1}  # noqa: E731
    match = {e: {"top5": stat(top5 if e == backbone else top5 / 2), "top1": stat(top1)} for e in evaluators}
    oracle = lambda c, t5: {"cosine_sim": stat(c), "top5": stat(t5), "top1": stat(t5)}  # noqa: E731
    return {"model": {"backbone": backbone, "variant": variant}, "n_images": 10, "samples_per_map": 1,
            "sampling": {"control_strength": 1.2, "guidance_scale": 2.5, "steps": 50},
            "confidence": 0.95, "cosine_sim": stat(cos), "cosine_sim_unrelated": 0.05, "match": match,
            "fid": {"features": "bb_a", "dim": 8, "n_real": 10, "n_fake": 10, "value": 12.5},
            "oracle_copy": oracle(0.9, 1.0),
            "oracle_nearest_train": oracle(0.45, 0.6) if backbone == "bb_a" else None,
            "cosine_sim_mismatched": stat(0.05),
            "cosine_sim_per_map": {"keys": ["k0", "k1", "k2", "k3"], "values": [cos + d for d in (-0.1, 0.1, 0.0, 0.0)]}}


def test_table_assembly(tmp_path):
    both = ["bb_a", "bb_b"]
    metrics = [_fake_metrics("bb_b", "pooled", 0.2, 0.3, 0.1, ["bb_b"]),
               _fake_metrics("bb_a", "unpooled", 0.6, 0.8, 0.5, both),
               _fake_metrics("bb_a", "pooled", 0.25, 0.4, 0.2, ["bb_a"]),
               _fake_metrics("bb_b", "unpooled", 0.5, 0.7, 0.4, both)]
    t1 = table1(metrics)
    header, rows = t1.header, t1.rows
    assert header[:6] == ["backbone", "layer", "variant", "cosine_sim", "cosine_sim_ci95_low", "cosine_sim_ci95_high"]
    assert "fid[bb_a pooled, N=10]" in header
    assert header[12:18] == ["cosine_sim_mismatched", "cosine_sim_mismatched_ci95_low", "cosine_sim_mismatched_ci95_high",
                             "unpooled_minus_pooled_cosine_sim", "unpooled_minus_pooled_cosine_sim_ci95_low",
                             "unpooled_minus_pooled_cosine_sim_ci95_high"]
    assert header[19:22] == ["n_images", "samples_per_map", "cosine_sim_unrelated"]
    assert header[22:] == ["oracle_copy_cosine_sim", "oracle_copy_top5_match", "oracle_nearest_train_cosine_sim",
                           "oracle_nearest_train_top5_match", "control_strength", "guidance_scale", "scoring"]
    assert t1.scoring == "eval_transform"  # metrics without a scoring key: scored as before it existed
    assert [(r.backbone, r.variant) for r in rows] == [("bb_a", "unpooled"), ("bb_b", "unpooled"),
                                                       ("bb_a", "pooled"), ("bb_b", "pooled")]
    first = rows[0]
    assert first.measures["cosine_sim"] == Interval(0.6, 0.5, 0.7)
    assert first.measures["top5_match"].mean == 0.8 and first.measures["top1_match"].mean == 0.5
    assert first.cells()[:6] == ["bb_a", "last", "unpooled", 0.6, 0.5, 0.7] and len(t1.csv_rows()[0]) == len(header)
    assert t1.csv_rows()[0][-3:] == [1.2, 2.5, "eval_transform"]  # the sampled (tuned) strength and guidance
    assert first.oracles == {"oracle_copy_cosine_sim": 0.9, "oracle_copy_top5_match": 1.0,
                             "oracle_nearest_train_cosine_sim": 0.45, "oracle_nearest_train_top5_match": 0.6}
    assert rows[1].oracles["oracle_copy_cosine_sim"] == 0.9  # bb_b: no nearest-train oracle
    assert np.isnan(rows[1].oracles["oracle_nearest_train_cosine_sim"])
    # the paired difference: per image, the same offsets cancel (bb_a 0.6 - 0.25 at every image)
    assert first.mismatched == Interval(0.05, -0.05, pytest.approx(0.15))
    assert first.paired == Interval(pytest.approx(0.35), pytest.approx(0.35), pytest.approx(0.35))
    assert np.isnan(rows[2].paired.mean)  # a pooled row has none
    assert table1(metrics, {"n_boot": 200, "level": 0.95, "seed": 0}).rows[1].paired.mean == pytest.approx(0.3)  # bb_b: 0.5 - 0.2
    shifted = [*metrics[:2], {**metrics[2], "cosine_sim_per_map": {"keys": ["k0", "k1", "k2", "k3"],
                                                                    "values": [0.25, 0.25, 0.05, 0.45]}}, metrics[3]]
    p = table1(shifted, {"n_boot": 500, "level": 0.95, "seed": 0}).rows[0].paired  # diffs 0.25, 0.45, 0.55, 0.15
    assert p.mean == pytest.approx(0.35) and 0.15 <= p.low < 0.35 < p.high <= 0.55
    with pytest.raises(ValueError, match="scored different images"):
        table1([*metrics[:2], {**metrics[2], "cosine_sim_per_map": {"keys": ["x"], "values": [0.1]}}, metrics[3]])
    t2 = table2(metrics, "unpooled")
    assert t2.header == ["conditioning", "bb_a:top5", "bb_a:top1", "bb_b:top5", "bb_b:top1"]
    assert t2.cells() == [["bb_a", 0.8, 0.5, 0.4, 0.5], ["bb_b", 0.35, 0.4, 0.7, 0.4]]
    write_tables(metrics, tmp_path, "demo", "unpooled", tmp_path / "metrics.json")
    with open(tmp_path / "table1.csv") as fh:
        assert len(list(csv.reader(fh))) == 5
    md = (tmp_path / "table1.md").read_text()
    assert "| bb_a | last | unpooled | 0.600 [0.500, 0.700] |" in md and "| 0.900 / 1.000 | 0.450 / 0.600 |" in md
    assert "| 0.050 [-0.050, 0.150] | 0.350 [0.350, 0.350] |" in md and "| 0.050 [-0.050, 0.150] | — |" in md
    assert md.startswith("# Table 1: reconstruction quality (demo, scoring: eval_transform)")
    resized = table1([{**m, "scoring": "resize"} for m in metrics])
    assert resized.scoring == "resize" and resized.csv_rows()[0][-1] == "resize"
    with pytest.raises(ValueError, match=r"scored in different ways: \['eval_transform', 'resize'\]"):
        table1(metrics[:1] + [{**metrics[1], "scoring": "resize"}])
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["table1"]["bb_b/pooled"]["cosine_sim"] == 0.2
    assert summary["table1"]["bb_a/pooled"]["oracle_nearest_train_cosine_sim"] == 0.45
    assert "oracle_nearest_train_cosine_sim" not in summary["table1"]["bb_b/pooled"]  # NaN is left out
    # An intermediate layer's model: its own row (layer column), its own row of Table 2, where its own
    # source answers for its backbone's column (a match is a prediction on the whole image).
    deep = _fake_metrics("bb_a@blocks.1", "unpooled", 0.3, 0.6, 0.2, ["bb_a@blocks.1", "bb_a", "bb_b"])
    t1 = table1([*metrics, deep])
    assert [c[:3] for c in t1.csv_rows()[:3]] == [["bb_a", "last", "unpooled"], ["bb_a", "blocks.1", "unpooled"],
                                                  ["bb_b", "last", "unpooled"]]
    t2 = table2([*metrics, deep], "unpooled")
    assert t2.header == ["conditioning", "bb_a:top5", "bb_a:top1", "bb_b:top5", "bb_b:top1"]
    assert t2.cells()[1] == ["bb_a@blocks.1", 0.3, 0.2, 0.3, 0.2]
    assert summary["table1"]["bb_a/unpooled"]["unpooled_minus_pooled_cosine_sim"]["mean"] == pytest.approx(0.35)
    assert "unpooled_minus_pooled_cosine_sim" not in summary["table1"]["bb_a/pooled"]
    assert summary["table2"]["bb_b"]["bb_b:top5"] == 0.7
    mixed = metrics + [{**_fake_metrics("bb_c", "pooled", 0, 0, 0, ["bb_c"]),
                        "fid": {"features": "inception", "n_fake": 10, "value": 1.0}}]
    with pytest.raises(ValueError, match="different FID features"):
        table1(mixed)


def sample_store_of(path, images, keys):
    arrays = {"images": ((1, *images.shape[1:]), "uint8", 0), "keys": ((), "str", None)}
    group, _ = rowstore.open_or_resume(path, len(keys), arrays, 8, 8,
                                       {"model": {"backbone": "tf_efficientnet_lite0", "variant": "unpooled"}})
    group["keys"][:] = np.array(keys, dtype=object)
    group["images"][:] = images[:, None]
    group["done"][:] = True
    rowstore.finalize(path)
    return path


METRICS = {"batch_size": 8, "device": "cpu", "bootstrap": 200, "confidence": 0.95, "seed": 0,
           "cross_model_variant": "unpooled", "scoring": "eval_transform", "oracles": {"nearest_train": False},
           "fid": {"features": "tf_efficientnet_lite0", "inception_weights": ""}}
METRICS_CFG = section("metrics", METRICS)


def originals_of(stores, shards, tmp_path, cfg=METRICS_CFG, resolution=64):
    """``score_originals`` of each feature store, as the workflow's rule writes them: {source: path}."""
    from featinv.metrics.evaluate import score_originals

    out = {}
    for name, store in stores.items():
        out[name] = tmp_path / "originals" / f"{name}-{resolution}.zarr"
        if not out[name].exists():
            score_originals(store, shards, cfg, resolution, out[name])
    return out


def test_reconstructions_equal_to_originals_score_perfectly(tmp_path, demo_shards, lite0_val_store):
    from featinv.metrics.evaluate import evaluate_samples, original_views

    keys = [str(k) for k in rowstore.open_complete(lite0_val_store)["keys"][:]]
    originals = original_views(demo_shards, "val", keys, 64)  # the demo crops are 64 px squares
    stores = {"tf_efficientnet_lite0": lite0_val_store}
    scored = originals_of(stores, demo_shards, tmp_path)
    perfect = evaluate_samples(sample_store_of(tmp_path / "same.zarr", originals, keys), stores, scored, demo_shards,
                               METRICS_CFG, per_image_csv=tmp_path / "same.csv")
    assert perfect["cosine_sim"]["mean"] == pytest.approx(1.0, abs=1e-3)
    assert perfect["match"]["tf_efficientnet_lite0"]["top1"]["mean"] == 1.0
    assert perfect["fid"]["value"] == pytest.approx(0.0, abs=1e-2) and perfect["fid"]["n_fake"] == len(keys)
    # The copy oracle is the original through the same path: here exactly the perfect reconstruction.
    assert perfect["oracle_copy"]["cosine_sim"]["mean"] == pytest.approx(perfect["cosine_sim"]["mean"], abs=1e-6)
    assert perfect["oracle_copy"]["top5"]["mean"] == 1.0 and perfect["oracle_nearest_train"] is None
    # ... read from score_originals' store: bit for bit what scoring the originals in the job gives
    from featinv.features.origin import store_backbone
    from featinv.metrics.evaluate import backbone_outputs, score_outputs
    store = rowstore.open_complete(lite0_val_store)
    in_job = score_outputs(backbone_outputs(store_backbone(store.attrs), originals, 8, "cpu"),
                           store["features"][:].astype(np.float32), store["topk_indices"][:, 0],
                           {"n_boot": 200, "level": 0.95, "seed": 0})
    assert {k: perfect["oracle_copy"][k] for k in in_job} == in_job
    with open(tmp_path / "same.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["key"] for r in rows] == keys and float(rows[0]["cosine_sim"]) > 0.999
    # Perfect reconstructions scored against another image's original: the chance pairing exactly.
    assert perfect["cosine_sim_mismatched"]["mean"] == pytest.approx(perfect["cosine_sim_unrelated"], abs=1e-3)
    assert perfect["cosine_sim_per_map"]["keys"] == keys
    assert np.mean(perfect["cosine_sim_per_map"]["values"]) == pytest.approx(perfect["cosine_sim"]["mean"], abs=1e-9)
    assert float(rows[0]["cosine_sim_mismatched"]) < 0.9

    # Every reconstruction swapped with another image's original: far worse on every measure.
    swapped = evaluate_samples(sample_store_of(tmp_path / "swapped.zarr", originals[::-1].copy(), keys), stores,
                               scored, demo_shards, METRICS_CFG)
    assert swapped["cosine_sim"]["mean"] < 0.5
    assert swapped["cosine_sim_unrelated"] == perfect["cosine_sim_unrelated"] < 0.5
    assert swapped["cosine_sim"]["ci_high"] < perfect["cosine_sim"]["ci_low"]
    assert swapped["match"]["tf_efficientnet_lite0"]["top1"]["mean"] < 0.5
    assert swapped["fid"]["value"] == pytest.approx(0.0, abs=1e-2)  # same set of images, other order

    # metrics.batch_size and metrics.device (x-execution keys) change no score
    batch3 = section("metrics", {**METRICS, "batch_size": 3, "device": "auto"})
    other_batch = evaluate_samples(tmp_path / "swapped.zarr", stores, originals_of(stores, demo_shards, tmp_path / "b3", batch3),
                                   demo_shards, batch3)
    def leaves(tree, path=""):
        if isinstance(tree, dict):
            return {k: v for key, sub in tree.items() for k, v in leaves(sub, f"{path}.{key}").items()}
        return {path: tree}

    def same(x, y):
        numeric = isinstance(y, float) or (isinstance(y, list) and all(isinstance(v, float) for v in y))
        return x == pytest.approx(y, rel=1e-5) if numeric else x == y

    for key in ("cosine_sim_per_map", "cosine_sim", "cosine_sim_mismatched", "pixel_mse", "match", "oracle_copy"):
        a, b = leaves(other_batch[key]), leaves(swapped[key])
        assert a.keys() == b.keys() and all(same(a[k], b[k]) for k in a), key
    assert other_batch["fid"]["value"] == pytest.approx(swapped["fid"]["value"], abs=1e-3)

    with pytest.raises(ValueError, match="keys differ"):
        evaluate_samples(sample_store_of(tmp_path / "other.zarr", originals, keys[::-1]), stores, scored, demo_shards,
                         METRICS_CFG)

    # The originals' scores are made once per source and split; ones made otherwise are refused, named.
    with pytest.raises(ValueError, match="made at 32 px"):
        evaluate_samples(tmp_path / "swapped.zarr", stores, originals_of(stores, demo_shards, tmp_path, resolution=32),
                         demo_shards, METRICS_CFG)

    # Nearest-train oracle with the originals themselves as the "training set": each finds itself.
    with_bank = section("metrics", {**METRICS, "oracles": {"nearest_train": True}})
    recalled = evaluate_samples(tmp_path / "swapped.zarr", stores, scored, demo_shards, with_bank, train_store=lite0_val_store)
    assert recalled["oracle_nearest_train"]["cosine_sim"]["mean"] == pytest.approx(
        recalled["oracle_copy"]["cosine_sim"]["mean"], abs=1e-6)
    assert recalled["oracle_nearest_train"]["train_rows"] == len(keys)
    with pytest.raises(ValueError, match="--train-store"):
        evaluate_samples(tmp_path / "swapped.zarr", stores, scored, demo_shards, with_bank)


def test_every_evaluator_scores_its_own_layer_and_pixel_mse_is_the_known_answer(tmp_path, demo_shards, lite0_val_store):
    """A second evaluating source (lite0 at blocks.4): the reconstructions are re-extracted at that layer
    and scored against its stored maps (perfect copies: 1 on both layers, the same whole-network
    predictions); pixel MSE is the mean squared difference in [0, 1] units, 0 for the copies."""
    from featinv.backbones import create_backbone
    from featinv.features.extract import extract
    from featinv.metrics.evaluate import evaluate_samples, original_views

    deep = tmp_path / "deep.zarr"
    extract(create_backbone("tf_efficientnet_lite0@blocks.4"), demo_shards, "val", deep, batch_size=8, num_workers=0,
            device="cpu", rows_per_shard=8, rows_per_chunk=4, progress=False)
    keys = [str(k) for k in rowstore.open_complete(lite0_val_store)["keys"][:]]
    originals = original_views(demo_shards, "val", keys, 64)
    stores = {"tf_efficientnet_lite0": lite0_val_store, "tf_efficientnet_lite0@blocks.4": deep}
    scored = originals_of(stores, demo_shards, tmp_path)
    perfect = evaluate_samples(sample_store_of(tmp_path / "same.zarr", originals, keys), stores, scored, demo_shards, METRICS_CFG)
    assert set(perfect["cosine_sim_by"]) == set(stores) == set(perfect["match"])
    for name in stores:
        assert perfect["cosine_sim_by"][name]["mean"] == pytest.approx(1.0, abs=1e-3)
        assert perfect["oracle_copy"]["cosine_sim_by"][name]["mean"] == pytest.approx(
            perfect["cosine_sim_by"][name]["mean"], abs=1e-6)
    assert perfect["match"]["tf_efficientnet_lite0@blocks.4"] == perfect["match"]["tf_efficientnet_lite0"]
    assert perfect["pixel_mse"]["mean"] == 0.0 and perfect["oracle_copy"]["pixel_mse"]["mean"] == 0.0
    swapped_images = originals[::-1].copy()
    swapped = evaluate_samples(sample_store_of(tmp_path / "swapped.zarr", swapped_images, keys), stores, scored, demo_shards,
                               METRICS_CFG)
    expected = ((swapped_images / 255.0 - originals / 255.0) ** 2).reshape(len(keys), -1).mean(axis=1).mean()
    assert swapped["pixel_mse"]["mean"] == pytest.approx(expected, rel=1e-5) and expected > 0.01
    assert swapped["cosine_sim_by"]["tf_efficientnet_lite0@blocks.4"]["mean"] < 0.5
    # FID reuses the evaluators' pooled features (lite0 is one): the same value as a separate extraction
    from featinv.metrics import fid
    from featinv.metrics.evaluate import fid_extractor
    flipped = originals[:, :, ::-1].copy()
    upside = evaluate_samples(sample_store_of(tmp_path / "flipped.zarr", flipped, keys), stores, scored, demo_shards,
                              METRICS_CFG)
    extract = fid_extractor("tf_efficientnet_lite0", {}, 8, "cpu")
    expected_fid = fid.frechet_distance(extract(originals), extract(flipped))
    assert upside["fid"]["value"] == pytest.approx(expected_fid, rel=1e-4) and expected_fid > 1.0


def test_nearest_by_cosine_matches_brute_force():
    from featinv.metrics.evaluate import nearest_by_cosine

    rng = np.random.default_rng(0)
    bank = rng.normal(size=(23, 5, 3, 2)).astype(np.float32)
    queries = rng.normal(size=(4, 5, 3, 2)).astype(np.float32)
    queries[1] = 3.0 * bank[17]  # a scaled copy: cosine 1 at every position
    brute = np.stack([cosine_per_position(np.repeat(q[None], len(bank), 0), bank) for q in queries])
    index, value = nearest_by_cosine(queries, bank, block=5)  # several blocks
    assert index.tolist() == brute.argmax(1).tolist() and index[1] == 17
    assert np.allclose(value, brute.max(1), atol=1e-5) and value[1] == pytest.approx(1.0, abs=1e-5)


def test_loss_plot_smoothing_and_bad_csv(tmp_path):
    from featinv.plots import plot_losses, smooth

    np.testing.assert_allclose(smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
    base = tmp_path / "base-loss.csv"
    base.write_text("step,loss,lr\n1,0.5,0.1\n2,0.4,0.1\n3,0.3,0.1\n")
    net = tmp_path / "bb-unpooled-loss.csv"
    net.write_text("step,loss,lr\n1,0.2,0.1\n2,0.1,0.1\n")
    plot_losses([base, net], tmp_path / "loss.png", window=2)
    assert (tmp_path / "loss.png").stat().st_size > 1000
    bad = tmp_path / "bad-loss.csv"
    bad.write_text("epoch,value\n1,2\n")
    with pytest.raises(ValueError, match="bad-loss.csv: expected a CSV with columns step,loss"):
        plot_losses([bad], tmp_path / "x.png")


def test_fid_warns_below_the_feature_dimension(caplog):
    rng = np.random.default_rng(0)
    with caplog.at_level("WARNING"):
        fid.frechet_distance(rng.normal(size=(10, 16)), rng.normal(size=(10, 16)))
    assert "FID on 10 images with 16-d features" in caplog.text


def test_scoring_choice_decides_whether_a_reconstructions_border_counts(demo_shards):
    """metrics.scoring: a reconstruction that is the original except for a noisy 3 px border (of 64)
    scores nearly perfectly through the eval transform (its centre crop cuts 1/16 of each side) and
    clearly lower when the whole image is resized, as the paper scores."""
    from featinv.backbones import create_backbone
    from featinv.data.target_view import view_images
    from featinv.metrics.evaluate import backbone_outputs
    from featinv.metrics.similarity import cosine_per_position

    lite0 = create_backbone("tf_efficientnet_lite0")
    originals = view_images(demo_shards, "val", 64)[:8].transpose(0, 3, 1, 2).copy()
    framed = originals.copy()
    noise = np.random.default_rng(0).integers(0, 256, framed.shape, dtype=np.uint8)
    border = np.ones((64, 64), bool)
    border[3:-3, 3:-3] = False
    framed[:, :, border] = noise[:, :, border]
    cos = {}
    for view in ("eval_transform", "resize"):
        ref = backbone_outputs(lite0, originals, 8, torch.device("cpu"), view=view)["features"]
        cos[view] = float(cosine_per_position(ref, backbone_outputs(lite0, framed, 8, torch.device("cpu"),
                                                                    view=view)["features"]).mean())
    assert cos["eval_transform"] > 0.9 and cos["resize"] < cos["eval_transform"] - 0.1, cos
