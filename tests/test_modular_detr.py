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
    from featinv.modular.colour import FILTERS
    from featinv.modular.detection import detection_errors
    from featinv.modular.finetune import finetune
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
    tune = {"stage": "dec", "lambdas": [0.0, 1.0], "steps": 2, "lr": 1e-4}
    analyses = analyses_params(examples=2, token_noise=token, detection={"threshold": 0.0, "iou": 0.01}, finetune=tune)
    out = tmp_path / "out"
    assert [r[0] for r in mse_by_stage(trained, analyses, coco_shards, out)["mse"]] == meta["stages"]
    assert [r[1] for r in prediction_inverses(trained, analyses, coco_shards, out)["rows"]] == ["pred_FD", "pred_OH"]
    colour = colour_analysis(trained, analyses, coco_shards, out)
    assert [r[0] for r in colour["pairwise_mse"]] == ["input", *meta["stages"]]
    # Fig 7 right for DETR: box AP with each filter on the whole image
    assert [r[0] for r in colour["ap"]] == ["none", *FILTERS] and all(0.0 <= v <= 1.0 for r in colour["ap"] for v in r[1:])
    assert (out / "colour_ap.csv").exists() and not (out / "colour_accuracy.csv").exists()
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
    # eq. 3 from dec with DETR's detection loss against the train boxes, scored by box AP
    tuned = finetune(trained, analyses, coco_shards, out, progress=False)["rows"]
    assert [(r[0], r[1]) for r in tuned[:2]] == [("fine-tuned", 0.0), ("fine-tuned", 1.0)]
    assert all(r[8] == "box AP" and 0.0 <= r[5] <= 1.0 and np.isnan(r[6]) for r in tuned)
    assert tuned[2][5] == pytest.approx(colour["ap"][0][1])  # the unchanged model's AP, two ways
    for png in ("reconstructions.png", "prediction.png", "colour.png", "token_noise.png", "layers.png", "detection.png",
                "finetune.png", "finetune_plot.png", "colour_plot.png"):
        assert Image.open(out / png).size[0] > 0


def test_detections_and_matching_known_answers():
    from featinv.modular.boxes import detections, iou, mask_box, match

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


def test_coco_box_ap_known_answers():
    """pycocotools' AP on hand-made detections: two objects of a category, one found exactly: at
    recall 0.5 precision 1, beyond it 0, so 51 of COCO's 101 recall points; both found: 1."""
    from featinv.modular.boxes import box_ap

    truth = [(1, (10, 10, 30, 30), 400), (1, (50, 50, 70, 80), 600)]
    assert box_ap([(truth, [(1, 0.9, (10, 10, 30, 30))])])["AP"] == pytest.approx(51 / 101)
    both = box_ap([(truth, [(1, 0.9, (10, 10, 30, 30)), (1, 0.8, (50, 50, 70, 80))])])
    assert both == {"AP": pytest.approx(1.0), "AP50": pytest.approx(1.0), "AP75": pytest.approx(1.0)}
    # one object, a box shifted to IoU 0.57: found at IoU thresholds 0.5 and 0.55 only, 2 of 10
    shifted = box_ap([(truth[:1], [(1, 0.9, (10, 15.5, 30, 35.5))])])  # IoU 290 / 510
    assert shifted["AP50"] == pytest.approx(1.0) and shifted["AP75"] == 0.0 and shifted["AP"] == pytest.approx(0.2)
    assert box_ap([(truth, [(2, 0.9, (10, 10, 30, 30))])])["AP"] == 0.0  # the wrong category finds nothing
    assert box_ap([(truth, [])])["AP"] == 0.0 and np.isnan(box_ap([([], [(1, 0.5, (0, 0, 1, 1))])])["AP"])


def test_detr_loss_is_the_models_own_loss_with_labels(detr_dir):
    """detr_loss on the staged model's x_pred equals DetrForObjectDetection(..., labels=...).loss."""
    from transformers import DetrForObjectDetection

    from featinv.modular.boxes import detr_loss, detr_targets
    from featinv.modular.detr import detr_stages

    model = DetrForObjectDetection.from_pretrained(detr_dir).eval()
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, *SIZE)
    objects = [[(1, (10, 10, 40, 30), 600), (3, (0, 0, 96, 64), 6144)], [(2, (50, 20, 90, 60), 1600)]]
    targets = [detr_targets(o, tuple(SIZE), model.config.num_labels) for o in objects]
    assert torch.allclose(targets[0]["boxes"][1], torch.tensor([0.5, 0.5, 1.0, 1.0]))  # the whole image
    assert targets[1]["class_labels"].tolist() == [2]
    with torch.no_grad():
        reference = model(pixel_values=pixels, pixel_mask=torch.ones(2, *SIZE, dtype=torch.long), labels=targets).loss
        ours = detr_loss(model, detr_stages(model, tuple(SIZE)).run(pixels), targets)
    assert ours == pytest.approx(float(reference), rel=1e-5)
    with pytest.raises(ValueError, match="object category 7 is not one of DETR's 4 labels"):
        detr_targets([(7, (0, 0, 1, 1), 1)], tuple(SIZE), 4)
