"""Sources -> shards -> manifest -> index: selection, class order, bad input, atomicity."""

import hashlib
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from featinv.config import section
from conftest import demo_data_params, encode, photo_array
from featinv.data import shards as shard_io
from featinv.data.sources import (
    CocoSource, ImageFolderSource, WebDatasetSource, imagenet_synsets, make_source, rle_decode,
)


def boxes_overlap(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_demo_train_and_val_never_share_pixels():
    src = make_source(demo_data_params(train_crops=20, val_crops=10))
    for name in src.classes():
        size = src.photo(name).size
        cut = src.region(size, "train")[2]
        train = src.crop_boxes(name, size, "train")
        val = src.crop_boxes(name, size, "val")
        assert all(b[2] <= cut for b in train) and all(b[0] >= cut for b in val)
        assert not any(boxes_overlap(t, v) for t in train for v in val)


def test_demo_crops_are_deterministic_and_labelled_by_photo():
    a = list(make_source(demo_data_params()).records("val"))
    b = list(make_source(demo_data_params()).records("val"))
    assert [r.key for r in a] == [r.key for r in b]
    assert np.array_equal(np.asarray(a[5].load()), np.asarray(b[5].load()))
    classes = make_source(demo_data_params()).classes()
    assert all(r.key.startswith(classes[r.cls] + "/") for r in a)


def test_demo_manifest_counts_and_sha256(demo_shards):
    manifest = shard_io.load_manifest(demo_shards)
    n_classes = len(manifest["classes"])
    assert manifest["splits"]["train"]["count"] == 3 * n_classes
    assert manifest["splits"]["val"]["count"] == 2 * n_classes
    for split, entry in manifest["splits"].items():
        assert sum(s["count"] for s in entry["shards"]) == entry["count"]
        for shard in entry["shards"]:
            assert shard["count"] <= 10
            assert hashlib.sha256((demo_shards / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]
    assert not list(demo_shards.glob("*.partial"))


def test_index_reads_back_rgb_images_in_manifest_order(demo_shards):
    index = shard_io.index_split(demo_shards, "val", verify=True)
    assert len(index) == shard_io.load_manifest(demo_shards)["splits"]["val"]["count"]
    assert [e.cls for e in index] == sorted(e.cls for e in index)
    img = shard_io.read_image(index[0])
    assert img.mode == "RGB" and img.size == (64, 64)
    with tarfile.open(index[0].shard) as tar:
        names = tar.getnames()
    assert f"{index[0].key}.png" in names and f"{index[0].key}.cls" in names and f"{index[0].key}.json" in names


def make_folder(root, split, classes, per_class, bad=()):
    for c in classes:
        d = root / split / c
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(photo_array(i)).save(d / f"img_{i:02d}.JPEG", quality=90)
    for rel, data in bad:
        (root / split / rel).write_bytes(data)


def test_imagefolder_synsets_follow_imagenet_order(tmp_path):
    synsets = imagenet_synsets()
    chosen = [synsets[999], synsets[0], synsets[417]]
    make_folder(tmp_path, "val", chosen, 2)
    src = ImageFolderSource(tmp_path, ["val"])
    assert src.label_space == "imagenet-1k"
    assert sorted({r.cls for r in src.records("val")}) == [0, 417, 999]


def test_imagefolder_plain_names_are_sorted(tmp_path):
    make_folder(tmp_path, "val", ["zebra", "apple", "mango"], 1)
    src = ImageFolderSource(tmp_path, ["val"])
    assert src.classes() == ["apple", "mango", "zebra"]
    assert [(r.key, r.cls) for r in src.records("val")] == [
        ("apple/img_00", 0), ("mango/img_00", 1), ("zebra/img_00", 2)
    ]


def test_first_n_per_class_skips_bad_images_and_records_them(tmp_path):
    good = encode(Image.fromarray(photo_array()), "JPEG")
    cmyk = encode(Image.fromarray(photo_array(3)).convert("CMYK"), "JPEG")
    make_folder(tmp_path / "src", "val", ["a", "b"], 3, bad=[
        ("a/img_00.JPEG", b"garbage"),           # sorts first: rejected, img_01 and img_02 fill in
        ("b/img_000.jpg", good[: len(good) // 3]),  # truncated
        ("b/img_001.jpg", cmyk),                 # converted, kept
    ])
    out = tmp_path / "shards"
    manifest = shard_io.build(ImageFolderSource(tmp_path / "src", ["val"]), out, "t", ["val"], {"val": 2}, 100)
    keys = [e.key for e in shard_io.index_split(out, "val")]
    assert keys == ["a/img_01", "a/img_02", "b/img_00", "b/img_001"]  # sorted by file name
    # decoded on three threads (build_shards takes the job's threads): the same shards and rejections
    threaded = shard_io.build(ImageFolderSource(tmp_path / "src", ["val"]), tmp_path / "threaded", "t", ["val"],
                              {"val": 2}, 100, threads=3)
    assert [e.key for e in shard_io.index_split(tmp_path / "threaded", "val")] == keys
    assert (tmp_path / "threaded" / "rejected.tsv").read_text() == (out / "rejected.tsv").read_text()
    assert [s["count"] for s in threaded["splits"]["val"]["shards"]] == [s["count"] for s in manifest["splits"]["val"]["shards"]]
    with tarfile.open(out / "val-000000.tar") as a, tarfile.open(tmp_path / "threaded" / "val-000000.tar") as b:
        assert [(m.name, a.extractfile(m).read()) for m in a] == [(m.name, b.extractfile(m).read()) for m in b]
    rejected = (out / "rejected.tsv").read_text().splitlines()
    assert rejected[0] == "split\tkey\treason"
    assert {line.split("\t")[1] for line in rejected[1:]} == {"a/img_00", "b/img_000"}
    assert manifest["rejected"] == 2
    with tarfile.open(out / "val-000000.tar") as tar:
        assert "b/img_001.png" in tar.getnames()  # CMYK re-encoded losslessly as RGB PNG


def test_a_split_with_no_images_is_an_error(tmp_path):
    (tmp_path / "src" / "val" / "a").mkdir(parents=True)
    (tmp_path / "src" / "val" / "a" / "x.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="split 'val': no images left"):
        shard_io.build(ImageFolderSource(tmp_path / "src", ["val"]), tmp_path / "o", "t", ["val"], {}, 10)
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_interrupted_build_leaves_no_complete_looking_output(tmp_path, monkeypatch):
    src = make_source(demo_data_params())
    out = tmp_path / "shards"
    records = list(src.records("train"))

    def failing(split):
        for i, r in enumerate(records):
            if i == 15:
                raise KeyboardInterrupt  # stands in for kill mid-run
            yield r

    monkeypatch.setattr(src, "records", failing)
    with pytest.raises(KeyboardInterrupt):
        shard_io.build(src, out, "demo", ["train"], {}, 10)
    assert not (out / "manifest.json").exists()
    assert list(out.glob("*.partial")), "the shard being written stays under its .partial name"
    with pytest.raises(FileNotFoundError, match="build the shards first"):
        shard_io.index_split(out, "train")


def test_truncated_shard_is_detected(tmp_path, demo_shards):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(demo_shards, copy)
    first = copy / "train-000000.tar"
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    with pytest.raises(ValueError, match="train-000000.tar"):
        shard_io.index_split(copy, "train")
    with pytest.raises(ValueError, match="sha256"):
        shard_io.index_split(copy, "train", verify=True)


def test_webdataset_source_in_place_and_reselected(tmp_path, demo_shards):
    wds_root = tmp_path / "wds"
    wds_root.mkdir()
    for tar in demo_shards.glob("val-*.tar"):
        (wds_root / f"imgs-{tar.name}").write_bytes(tar.read_bytes())
    src = WebDatasetSource(wds_root)
    out = tmp_path / "out"
    manifest = shard_io.build(src, out, "w", ["val"], {"val": None}, 100)
    entry = manifest["splits"]["val"]
    assert entry["in_place"] and entry["count"] == 24
    assert not list(out.glob("*.tar"))
    original = [e.key for e in shard_io.index_split(demo_shards, "val")]
    assert [e.key for e in shard_io.index_split(out, "val")] == original
    manifest = shard_io.build(WebDatasetSource(wds_root), tmp_path / "sel", "w", ["val"], {"val": 1}, 100)
    assert manifest["splits"]["val"]["count"] == 12


def test_coco_records_carry_boxes_categories_and_masks(tmp_path):
    (tmp_path / "val2017").mkdir()
    (tmp_path / "annotations").mkdir()
    Image.fromarray(photo_array(size=40)).save(tmp_path / "val2017" / "000000000001.jpg")
    coco = {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "height": 40, "width": 40}],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 18, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0,
             "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
            {"id": 8, "image_id": 1, "category_id": 1, "bbox": [20, 20, 20, 20], "area": 400, "iscrowd": 1,
             "segmentation": {"size": [40, 40], "counts": [20 * 40 + 20, 20, 20, 20] + [20, 20] * 18 + [20]}},
        ],
    }
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(coco))
    src = CocoSource(tmp_path, "annotations/instances_{split}2017.json", "{split}2017")
    out = tmp_path / "shards"
    manifest = shard_io.build(src, out, "coco", ["val"], {}, 10)
    assert manifest["classes"] == ["person", "dog"]
    with tarfile.open(out / "val-000000.tar") as tar:
        meta = json.loads(tar.extractfile("000000000001.json").read())
        masks = np.load(tar.extractfile("000000000001.masks.npz"))["masks"]
        cls = int(tar.extractfile("000000000001.cls").read())
    assert cls == 0  # the largest object is the person
    assert meta["boxes"] == [[0, 0, 10, 10], [20, 20, 20, 20]] and meta["category_ids"] == [18, 1]
    assert masks.shape == (2, 40, 40)
    assert masks[1].sum() == 400 and masks[1][20:, 20:].all()
    assert masks[0][1:9, 1:9].all() and not masks[0][15:, 15:].any()


def test_rle_string_decoding_matches_the_list_form():
    from featinv.data.sources import _rle_from_string

    # Encode runs with COCO's scheme (as pycocotools rleToString does), then decode.
    def encode_counts(counts):
        out = []
        for i, x in enumerate(counts):
            if i > 2:
                x -= counts[i - 2]
            more = True
            while more:
                c = x & 0x1F
                x >>= 5
                more = (x != -1) if (c & 0x10) else (x != 0)
                if more:
                    c |= 0x20
                out.append(chr(c + 48))
        return "".join(out)

    counts = [3, 2, 4, 7, 100, 1, 0, 38]
    assert _rle_from_string(encode_counts(counts)) == counts
    mask = rle_decode(encode_counts([3, 2, 11]), 4, 4)
    assert mask.T.reshape(-1).tolist() == [False] * 3 + [True] * 2 + [False] * 11


VIEWS = {"splits": ["train"], "count": 3, "scale": [0.25, 0.5], "flip": True, "seed": 0}


def test_views_are_cached_crops_named_after_their_image(tmp_path):
    p = demo_data_params(photos=["chelsea", "rocket"], image_size=96)
    out = tmp_path / "demo"
    manifest = shard_io.build(make_source(p), out, "demo", p.splits, p.per_class, p.shard_maxcount, section("data.views", VIEWS))
    assert manifest["splits"]["train"]["views"] == {k: VIEWS[k] for k in ("count", "scale", "flip", "seed")}
    assert "views" not in manifest["splits"]["val"]
    plain = shard_io.index_split(out, "train", views=False)
    index = shard_io.index_split(out, "train")
    assert len(index) == 3 * len(plain) == 3 * manifest["splits"]["train"]["count"]
    assert [e.key for e in index[:3]] == [f"{plain[0].key}@v{k}" for k in range(3)]
    assert [e.cls for e in index] == [e.cls for e in plain for _ in range(3)]
    assert len(shard_io.index_split(out, "val")) == manifest["splits"]["val"]["count"]
    image = np.asarray(shard_io.read_image(plain[0]))
    # View 0 is the image itself; the others are squares of 25-50% of its area, drawn the same every time.
    assert np.array_equal(np.asarray(shard_io.read_image(index[0])), image)
    sides = []
    for entry in index:
        if entry.view.index == 0:
            continue
        view = np.asarray(shard_io.read_image(entry))
        assert view.shape[0] == view.shape[1] and 0.25 * 96**2 - 200 <= view.shape[0] ** 2 <= 0.5 * 96**2 + 200
        again = shard_io.index_split(out, "train")[index.index(entry)]
        assert np.array_equal(np.asarray(shard_io.read_image(again)), view)
        sides.append(view.shape[0])
        (x0, y0, x1, y1), flipped = entry.view.box((96, 96))
        source = np.asarray(shard_io.read_image(next(e for e in plain if e.key == entry.view.source_key)))
        crop = source[y0:y1, x0:x1]
        assert np.array_equal(view, crop[:, ::-1] if flipped else crop)
    assert len(set(sides)) > 1  # random scales, not one fixed crop
    flips = [e.view.box((96, 96))[1] for e in index if e.view.index]
    assert any(flips) and not all(flips)


def test_views_params_are_checked(tmp_path):
    p = demo_data_params(photos=["chelsea"])
    with pytest.raises(ValueError, match="data.views.scale"):
        shard_io.build(make_source(p), tmp_path / "a", "demo", p.splits, p.per_class, 10,
                       section("data.views", {**VIEWS, "scale": [0.6, 0.3]}))
    with pytest.raises(ValueError, match=r"data.views.splits \['test'\]"):
        shard_io.build(make_source(p), tmp_path / "b", "demo", p.splits, p.per_class, 10,
                       section("data.views", {**VIEWS, "splits": ["test"]}))


def test_demo_photos_carry_their_imagenet_class():
    source = make_source(demo_data_params(photos=["chelsea", "imagenet_00_243", "imagenet_14_129"]))
    assert source.classes() == ["chelsea", "imagenet_00_243", "imagenet_14_129"]
    assert source.imagenet_classes() == [None, 243, 129]
    assert source.photo("imagenet_00_243").size == (512, 512)
    with pytest.raises(ValueError, match="unknown photo"):
        make_source(demo_data_params(photos=["nope"]))
