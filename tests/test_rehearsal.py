"""What `python -m featinv.rehearsal prepare` writes is what users bring, in their formats: each part
loads through the project's own paper-scale loaders (the full rehearsal runs in .ci/run)."""

import json

import torch

from featinv import rehearsal


def test_the_imagenet_and_coco_trees_share_one_root_and_read_as_their_sources(tmp_path):
    from featinv.data.sources import CocoSource, ImageFolderSource, imagenet_synsets

    rehearsal.imagenet_tree(tmp_path)
    rehearsal.coco_tree(tmp_path)
    imagenet = ImageFolderSource(tmp_path, ["train", "val"])
    assert imagenet.label_space == "imagenet-1k"  # real WordNet ids, in ImageNet's class order
    records = list(imagenet.records("val"))
    folders = {p.name for p in (tmp_path / "val").iterdir()}
    assert len(records) == 12 and {imagenet_synsets()[r.cls] for r in records} == folders and len(folders) == 11
    assert sum(r.cls == imagenet_synsets().index("n03594945") for r in records) == 2  # both jeeps: the concept figure's
    train = list(imagenet.records("train"))
    assert len(train) == 20 and len({r.cls for r in train}) == 19
    coco = CocoSource(tmp_path, "annotations/instances_{split}2017.json", "{split}2017")
    val = list(coco.records("val"))
    assert len(val) == 6 and all(r.extras["boxes"] for r in val)
    doc = json.loads((tmp_path / "annotations" / "instances_train2017.json").read_text())
    assert {c["id"] for c in doc["categories"]} == {c for c, _ in rehearsal.COCO_CATEGORIES}


def test_the_minisd_directory_loads_as_the_paper_base_with_sds_latent_geometry(tmp_path):
    from featinv.diffusion.base import load_base

    rehearsal.mini_sd(tmp_path / "miniSD")
    assert json.loads((tmp_path / "miniSD" / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert json.loads((tmp_path / "miniSD" / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "PNDMScheduler"
    base = load_base(tmp_path / "miniSD", 256)
    assert base.latent_shape == (4, 32, 32) and base.codec.scale == rehearsal.SD_SCALING
    tokens = base.tokenizer.convert_ids_to_tokens(base.tokenizer("the image").input_ids)
    assert tokens == ["<|startoftext|>", "the</w>", "im", "ag", "e</w>", "<|endoftext|>"]  # CLIP's BPE
    assert base.prompt_embeddings("a photo").shape == (2, 77, rehearsal.TEXT_HIDDEN)


def test_the_inception_file_is_what_pytorch_fid_loads(tmp_path):
    from featinv.metrics.fid import inception_model

    path = tmp_path / rehearsal.INCEPTION
    rehearsal.inception_file(path)
    model = inception_model(path)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 299, 299))[0].shape == (1, 2048, 1, 1)


def test_check_names_targets_not_in_sds_latent_scale(tmp_path, monkeypatch):
    """The rehearsal check's scaling-factor test: latents encoded with another factor are named."""
    from featinv.data.sources import ImageFolderSource
    from featinv.data.shards import build
    from featinv.diffusion.base import load_base
    from featinv.diffusion.targets import encode_targets

    monkeypatch.chdir(tmp_path)
    rehearsal.imagenet_tree(rehearsal.ROOT / "datasets")
    rehearsal.mini_sd(rehearsal.ROOT / "miniSD")
    build(ImageFolderSource(rehearsal.ROOT / "datasets", ["train"]), "data/shards/imagenet", "imagenet", ["train"],
          {"train": 1}, 100)
    codec = load_base(rehearsal.ROOT / "miniSD", 256).codec
    for scale, expected in ((rehearsal.SD_SCALING, []), (1.0, ["not SD's scaling factor 0.18215"])):
        codec.scale = scale
        encode_targets(codec, "vae", "data/shards/imagenet", "train", f"data/targets/imagenet/train-{scale}.zarr", 256,
                       batch_size=4, num_workers=0, device="cpu", progress=False)
        target = tmp_path / "data/targets/imagenet/train.zarr"
        if target.exists():
            target.unlink()
        target.symlink_to(tmp_path / f"data/targets/imagenet/train-{scale}.zarr")
        problems = rehearsal._check_targets(tmp_path)
        assert [p for p in problems if all(e not in p for e in expected)] == [] and len(problems) == len(expected)
