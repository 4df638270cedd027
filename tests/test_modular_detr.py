"""Modular inversion of DETR end to end: a tiny random-weight DETR saved as a model directory, COCO
shards (photographs with instance annotations), train-modular and every DETR analysis."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from test_modular import analyses_params, modular_params, tiny_detr

SIZE = [64, 96]


@pytest.fixture(scope="module")
def coco_shards(demo_shards, tmp_path_factory):
    """COCO 2017 layout built from the demo photographs (8 train, 6 val), two boxed objects each of
    categories 1..3, cut into shards by the project's COCO source."""
    from featinv.data import shards as shard_io
    from featinv.data.shards import index_split, read_image
    from featinv.data.sources import CocoSource

    root = tmp_path_factory.mktemp("coco")
    (root / "annotations").mkdir()
    photos = [read_image(e) for e in index_split(demo_shards, "train", views=False)[::2][:14]]
    rng = np.random.default_rng(0)
    for split, chosen in (("train", photos[:8]), ("val", photos[8:])):
        (root / f"{split}2017").mkdir()
        images, anns = [], []
        for i, img in enumerate(chosen, 1):
            img.save(root / f"{split}2017" / f"{i}.png")
            images.append({"id": i, "file_name": f"{i}.png", "height": img.height, "width": img.width})
            for k in range(2):
                w, h = (int(v) for v in rng.integers(12, 30, 2))
                x, y = int(rng.integers(0, img.width - w)), int(rng.integers(0, img.height - h))
                anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1 + (i + k) % 3, "bbox": [x, y, w, h],
                             "area": w * h, "iscrowd": 0, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
        coco = {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(coco))
    out = root / "shards"
    shard_io.build(CocoSource(root, "annotations/instances_{split}2017.json", "{split}2017"), out, "coco",
                   ["train", "val"], {}, 10)
    return out


@pytest.fixture(scope="module")
def detr_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("detr")
    tiny_detr(num_labels=4, d_model=32, queries=6).save_pretrained(path)
    return path


def test_detr_inverses_train_and_every_detr_analysis_runs(coco_shards, detr_dir, tmp_path):
    from featinv.modular.analysis import mse_by_stage
    from featinv.modular.colour import colour_analysis
    from featinv.modular.detection import detection_errors
    from featinv.modular.layers import intermediate_layers
    from featinv.modular.noise import token_noise
    from featinv.modular.prediction import prediction_inverses
    from featinv.modular.trained import load_trained, train_inverses

    cfg = modular_params(backbone=f"detr:{detr_dir}", groups=[], image_size=SIZE, fit="resize", hidden=8, depth=1,
                         heads=2, steps=2, batch_size=4)
    meta = train_inverses(cfg, coco_shards, tmp_path / "m", tmp_path / "loss.csv", progress=False)
    assert meta["stages"] == ["bb", "enc", "dec", "pred"] and meta["n_train"] == 8
    assert meta["shapes"][-1] == [6, 5 + 4]  # queries x (4 classes + no-object + box)
    trained = load_trained(cfg, tmp_path / "m")
    token = {"stages": ["bb", "enc"], "fraction": 0.5, "low": 0.0, "high": 1.0, "seed": 0}
    analyses = analyses_params(examples=2, token_noise=token, detection={"threshold": 0.0, "iou": 0.01})
    out = tmp_path / "out"
    assert [r[0] for r in mse_by_stage(trained, analyses, coco_shards, out)["mse"]] == meta["stages"]
    assert [r[1] for r in prediction_inverses(trained, analyses, coco_shards, out)["rows"]] == ["pred_FD", "pred_OH"]
    colour = colour_analysis(trained, analyses, coco_shards, out)
    assert [r[0] for r in colour["pairwise_mse"]] == ["input", *meta["stages"]]
    noise = token_noise(trained, analyses, coco_shards, out)["rows"]
    # with the modular bb^-1 and with the local inverse backbone (section 4.5)
    assert [(r[0], r[3]) for r in noise] == [("bb_man", "modular"), ("enc_man", "modular"), ("enc_man+", "modular"),
                                             ("bb_man local", "local"), ("enc_man local", "local"),
                                             ("enc_man+ local", "local")]
    assert trained.local_first is not None and meta["parameters"]["local_first"] > 0
    layers = intermediate_layers(trained, analyses, coco_shards, out)["rows"]
    assert {(r[0], r[3]) for r in layers} >= {("enc", "bb"), ("enc", "enc"), ("dec", "dec")}
    rows = detection_errors(trained, analyses, coco_shards, out)["rows"]
    assert [r[0] for r in rows] == meta["stages"]
    assert all(r[4] + r[8] == 12 for r in rows)  # 6 val images x 2 objects, each detected or missed
    with open(out / "detection.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 4
    for png in ("reconstructions.png", "prediction.png", "colour.png", "token_noise.png", "layers.png", "detection.png"):
        assert Image.open(out / png).size[0] > 0


def test_detections_and_matching_known_answers():
    from featinv.modular.detection import detections, iou, mask_box, match

    mask = torch.zeros(10, 20, dtype=torch.bool)
    mask[2:5, 3:9] = True
    assert mask_box(mask) == (3, 2, 9, 5) and mask_box(torch.zeros(4, 4, dtype=torch.bool)) is None
    assert iou((0, 0, 2, 2), (1, 0, 3, 2)) == pytest.approx(2 / 6) and iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    # two queries over 2 classes + no-object: the first confident in class 1, the second in no-object
    logits = torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 9.0]])
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.2, 0.2, 0.1, 0.1]])  # cx, cy, w, h
    found = detections(torch.cat([logits, boxes], -1), (100, 200), threshold=0.7)
    assert len(found) == 1 and found[0][0] == 1 and found[0][1] > 0.9
    assert found[0][2] == pytest.approx((50.0, 25.0, 150.0, 75.0))
    objects = [(1, (50, 25, 150, 75)), (1, (52, 25, 150, 75)), (0, (50, 25, 150, 75)), (1, (0, 0, 10, 10))]
    assert match(objects, found, 0.5) == [True, False, False, False]  # one detection, its best object of its class
