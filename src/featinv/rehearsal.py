"""A rehearsal of paper scale on a CPU: what a user brings to the paper overlays, in the formats they
bring it, made from small real photographs and weights with random values.

``python -m featinv.rehearsal prepare`` writes under ``data/rehearsal/``:

- ``datasets/{train,val}/<wnid>/*.JPEG``: an ImageNet-format tree; foolbox's 20 ImageNet validation
  photographs under their own WordNet ids (crops of each for train);
- ``datasets/annotations/instances_{train,val}2017.json`` and ``datasets/{train,val}2017/*.jpg``: a
  COCO 2017 tree of the demo photographs with boxes and polygons under COCO's category ids (the two
  layouts do not overlap, so one ``data.root`` serves the ImageNet and the COCO command);
- ``miniSD/``: a Stable Diffusion diffusers directory as ``lambdalabs/miniSD-diffusers`` lays it out
  (``model_index.json``, ``unet/``, ``vae/`` with SD's scaling factor 0.18215 and 8x downsampling,
  ``text_encoder/``, ``tokenizer/`` with CLIP's BPE files ``vocab.json`` / ``merges.txt``, and
  ``scheduler/`` with SD's PNDM config), its widths small (UNet 32/64 with attention at 16 x 16, VAE 16/32/32/32, text 32);
- ``weights/<timm name>/model.safetensors``: the paper's backbones (ResNet50, ConvNeXt-B, SwinV2-B)
  and the modular part's ViT-B/16 at their full architectures, as ``backbones.weights`` names them;
- ``torch/pt_inception-2015-12-05-6726825d.pth``: pytorch-fid's Inception file, by the name it has;
- ``huggingface/hub/models--facebook--detr-resnet-50/``: DETR (that model's architecture) in a Hugging
  Face cache, as ``from_pretrained`` leaves it on a machine with internet (run with
  ``HF_HOME=data/rehearsal/huggingface``: the cache a user copies over).

``config/rehearsal.yaml`` points the paper overlays at these and changes only sizes (images per
class, steps, the tuning grid, row indices) and locations; then the README's paper-scale commands
run end to end. ``python -m featinv.rehearsal check`` verifies what the paper fixes in the outputs
(the three backbones' map shapes, ConvNeXt at 288 px, SD's latent shape and scaling factor, FID on
Inception, every table, figure and analysis) and names what is wrong. Nothing here is a trained
model: the reconstructions are noise, the point is that every path runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path("data/rehearsal")
BACKBONES = ("resnet50.tv_in1k", "convnext_base.fb_in22k_ft_in1k", "swinv2_base_window12to24_192to384.ms_in22k_ft_in1k",
             "vit_base_patch16_224.augreg_in1k")
INCEPTION = "pt_inception-2015-12-05-6726825d.pth"
COCO_CATEGORIES = ((1, "person"), (3, "car"), (17, "cat"), (18, "dog"), (62, "chair"))
SD_SCALING = 0.18215
TEXT_HIDDEN = 32


def _photos() -> list[tuple[int, Any]]:
    """foolbox's 20 ImageNet validation photographs with their class index."""
    from featinv.data.sources import DEMO_PHOTOS, DemoSource

    return [(spec.imagenet_class, DemoSource.photo(name)) for name, spec in sorted(DEMO_PHOTOS.items())
            if spec.imagenet_class is not None]


def imagenet_tree(root: Path, train_per_photo: int = 1, val_photos: int = 12) -> None:
    """``root/{train,val}/<wnid>/<name>.JPEG``: ``train_per_photo`` crops of each photograph (corners,
    one flipped) in train under its WordNet id, and ``val_photos`` of the photographs themselves in
    val (both of a class that has two, the concept figure's, then the others in order; as ImageNet's
    own val, some classes of train have no val image here). The sizes are the CPU's: every image
    costs each of the paper's three backbones, sampling at 50 steps and the evaluation."""
    from collections import Counter

    from PIL import ImageOps

    from featinv.data.sources import imagenet_synsets

    synsets = imagenet_synsets()
    photos = _photos()
    count = Counter(cls for cls, _ in photos)
    in_val = set(sorted(range(len(photos)), key=lambda i: (count[photos[i][0]] < 2, i))[:val_photos])
    for i, (cls, img) in enumerate(photos):
        wnid = synsets[cls]
        w, h = img.size
        if i in in_val:
            (root / "val" / wnid).mkdir(parents=True, exist_ok=True)
            img.save(root / "val" / wnid / f"ILSVRC2012_val_{i:08d}.JPEG", quality=92)
        (root / "train" / wnid).mkdir(parents=True, exist_ok=True)
        for k in range(train_per_photo):
            box = (0, 0, int(w * 0.8), int(h * 0.8)) if k % 2 == 0 else (int(w * 0.2), int(h * 0.2), w, h)
            crop = img.crop(box)
            crop = ImageOps.mirror(crop) if k % 2 else crop
            crop.save(root / "train" / wnid / f"{wnid}_{i * 10 + k}.JPEG", quality=92)


def coco_tree(root: Path) -> None:
    """COCO 2017 layout: the demo photographs (train: 10, val: 6) with two boxed objects each,
    polygons as segmentation, under COCO category ids."""
    import numpy as np

    from featinv.data.sources import DEMO_PHOTOS, DemoSource

    names = sorted(DEMO_PHOTOS)
    rng = np.random.default_rng(0)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    next_id = 1
    for split, chosen in (("train", names[:10]), ("val", names[10:16])):
        (root / f"{split}2017").mkdir(exist_ok=True)
        images: list[dict[str, Any]] = []
        anns: list[dict[str, Any]] = []
        for name in chosen:
            img = DemoSource.photo(name)
            img.thumbnail((640, 640))
            image_id = next_id
            next_id += 1
            file_name = f"{image_id:012d}.jpg"
            img.save(root / f"{split}2017" / file_name, quality=92)
            images.append({"id": image_id, "file_name": file_name, "height": img.height, "width": img.width})
            for k in range(2):
                w, h = (int(rng.integers(img.width // 5, img.width // 2)), int(rng.integers(img.height // 5, img.height // 2)))
                x, y = int(rng.integers(0, img.width - w)), int(rng.integers(0, img.height - h))
                category = COCO_CATEGORIES[(image_id + k) % len(COCO_CATEGORIES)][0]
                anns.append({"id": len(anns) + 1 + 1000 * image_id, "image_id": image_id, "category_id": category,
                             "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0,
                             "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
        doc = {"info": {"description": "featinv rehearsal"}, "images": images, "annotations": anns,
               "categories": [{"id": c, "name": n, "supercategory": n} for c, n in COCO_CATEGORIES]}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(doc))


def _byte_alphabet() -> list[str]:
    """GPT-2's (and CLIP's) printable stand-ins for the 256 byte values, in its order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in keep] + [chars[b] for b in range(256) if b not in keep]


def _clip_tokenizer_files(directory: Path) -> int:
    """CLIP's BPE tokenizer files (byte-level alphabet, end-of-word marks, CLIP's special tokens, a
    few merges); returns the vocabulary size."""
    alphabet = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab.update({c + "</w>": len(alphabet) + i for i, c in enumerate(alphabet)})
    merges = ["i m", "a g", "t h", "th e</w>"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {**special, "model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer",
         "errors": "replace", "add_prefix_space": False}))
    return len(vocab)


def mini_sd(directory: Path, seed: int = 0) -> None:
    """A Stable Diffusion diffusers directory in miniSD's layout (256 px, SD's VAE geometry), small widths."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vocab = _clip_tokenizer_files(directory / "tokenizer")
    UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8, norm_num_groups=16,  # attention at 16 x 16 only
    ).save_pretrained(directory / "unet")
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=256, scaling_factor=SD_SCALING,
        block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ).save_pretrained(directory / "vae")
    CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=TEXT_HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
    )).save_pretrained(directory / "text_encoder")
    (directory / "scheduler").mkdir(parents=True, exist_ok=True)
    (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "PNDMScheduler", "_diffusers_version": "0.2.2", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
        "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
        "clip_sample": False}, indent=2))
    (directory / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.8.0",
        "feature_extractor": [None, None], "safety_checker": [None, None], "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}, indent=2))


def backbone_weights(directory: Path, seed: int = 0) -> None:
    """``<name>/model.safetensors`` of each backbone at its full architecture, random values."""
    import timm
    import torch
    from safetensors.torch import save_file

    for name in BACKBONES:
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False)
        (directory / name).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / name / "model.safetensors"))


def inception_file(path: Path, seed: int = 0) -> None:
    """pytorch-fid's Inception-v3 FID weights file (the state dict of its ``fid_inception_v3``, saved
    with ``torch.save`` as pytorch-fid's release is), random values."""
    import torch
    from pytorch_fid import inception as fid_inception

    from featinv.metrics.fid import _fid_blocks

    torch.manual_seed(seed)
    net = _fid_blocks(fid_inception, fid_inception._inception_v3(num_classes=1008, aux_logits=False, weights=None))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)


DETR_HUB_ID = "facebook/detr-resnet-50"
HF_SNAPSHOT = "0" * 40  # the snapshot a hub cache names by its commit


def detr_cache(hf_home: Path, seed: int = 0) -> Path:
    """DETR with facebook/detr-resnet-50's architecture (timm ResNet50, 6 + 6 layers, 100 queries,
    COCO's 91 labels), random values, in the Hugging Face cache under ``hf_home`` as
    ``from_pretrained("facebook/detr-resnet-50")`` leaves it (``hub/models--facebook--detr-resnet-50``,
    ``refs/main``, ``snapshots/<commit>/``); what a user copies from a machine with internet."""
    import torch
    from transformers import DetrConfig, DetrForObjectDetection

    repo = hf_home / "hub" / f"models--{DETR_HUB_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / HF_SNAPSHOT
    torch.manual_seed(seed)
    config = DetrConfig(use_pretrained_backbone=False, num_labels=91)  # COCO's category ids 0..90, as its id2label
    DetrForObjectDetection(config).save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(HF_SNAPSHOT)
    return snapshot


def prepare(root: Path = ROOT) -> None:
    """Write everything ``config/rehearsal.yaml`` points at (see the module docstring)."""
    steps = [("ImageNet tree", lambda: imagenet_tree(root / "datasets")),
             ("COCO tree", lambda: coco_tree(root / "datasets")),
             ("miniSD directory", lambda: mini_sd(root / "miniSD")),
             ("backbone weights", lambda: backbone_weights(root / "weights")),
             ("Inception file", lambda: inception_file(root / "torch" / INCEPTION)),
             ("DETR in a Hugging Face cache", lambda: detr_cache(root / "huggingface"))]
    for what, step in steps:
        print(f"rehearsal: {what}", flush=True)
        step()
    print(f"ok: {root}")


# What the paper fixes, as the rehearsal's outputs must show it: each backbone's map at its input size.
MAPS = {"resnet50.tv_in1k": ([2048, 7, 7], 224), "convnext_base.fb_in22k_ft_in1k": ([1024, 9, 9], 288),
        "swinv2_base_window12to24_192to384.ms_in22k_ft_in1k": ([1024, 12, 12], 384)}
VIT_RUN = "results/modular/imagenet/vit_base_patch16_224.augreg_in1k"
DETR_RUN = "results/modular/coco/detr-facebook-detr-resnet-50"


def check(workdir: Path = Path(".")) -> list[str]:
    """What is wrong with the rehearsal's outputs (empty: nothing): Table 1 with the three backbones
    x two variants, FID on Inception and the tuned strength and guidance of each model; Table 2 3 x 3;
    every backbone's map at its paper input size (ConvNeXt 288 px: 9 x 9); the diffusion targets in
    SD's latent space (4 x 32 x 32 at 256 px, scaled by SD's 0.18215); the figures, layer study and
    comparison of rule ``all``; the ViT and DETR analyses (DETR's box AP)."""
    import csv

    import numpy as np

    from featinv import rowstore

    problems: list[str] = []
    w = Path(workdir)

    def rows(path: str) -> list[dict[str, str]]:
        if not (w / path).exists():
            problems.append(f"{path}: missing")
            return []
        with open(w / path) as fh:
            return list(csv.DictReader(fh))

    table1 = rows("results/table1.csv")
    got = {(r["backbone"], r["variant"]) for r in table1}
    wanted = {(b, v) for b in MAPS for v in ("unpooled", "pooled")}
    if table1 and got != wanted:
        problems.append(f"results/table1.csv: rows {sorted(got)}, not the three paper backbones x two variants")
    for r in table1:
        fid = [k for k in r if k.startswith("fid[")]
        if not fid or not fid[0].startswith("fid[inception"):
            problems.append(f"results/table1.csv: FID column {fid}, not pytorch-fid's Inception (metrics.fid.features)")
        elif not np.isfinite(float(r[fid[0]])):
            problems.append(f"results/table1.csv: {r['backbone']} {r['variant']}: FID {r[fid[0]]}")
        for key in ("control_strength", "guidance_scale"):
            if not np.isfinite(float(r.get(key, "nan"))):
                problems.append(f"results/table1.csv: {r['backbone']} {r['variant']}: no {key} (tuning: auto)")
    table2 = rows("results/table2.csv")
    if table2 and (len(table2) != 3 or len(table2[0]) != 1 + 2 * 3):
        problems.append(f"results/table2.csv: {len(table2)} rows x {len(table2[0]) - 1} cells, not 3 x (3 x top5/top1)")
    for name, (shape, size) in MAPS.items():
        store = w / f"data/features/imagenet/{name}/val.zarr"
        if not store.exists():
            problems.append(f"{store.relative_to(w)}: missing")
            continue
        attrs = dict(rowstore.open_complete(store).attrs)
        if list(attrs["fmap_shape"]) != shape or int(attrs["preprocessing"]["input_size"][-1]) != size:
            problems.append(f"{name}: map {attrs['fmap_shape']} at {attrs['preprocessing']['input_size'][-1]} px, "
                            f"not the paper's {shape} at {size} px (backbones.input_size)")
    problems += _check_targets(w)
    for path in ("results/figures/imagenet/concepts.png", "results/figures/imagenet/interpolation.png",
                 "results/figures/imagenet/composition.png", "results/figures/imagenet/qualitative.png",
                 "results/comparison/imagenet/resnet50.tv_in1k.csv",
                 "results/layers/imagenet/convnext_base.fb_in22k_ft_in1k.csv",
                 f"{VIT_RUN}/mse_by_stage.csv", f"{VIT_RUN}/attention.csv", f"{VIT_RUN}/finetune.csv",
                 f"{DETR_RUN}/mse_by_stage.csv", f"{DETR_RUN}/detection.csv", f"{DETR_RUN}/colour_ap.csv"):
        if not (w / path).exists() or not (w / path).stat().st_size:
            problems.append(f"{path}: missing or empty")
    for r in rows(f"{DETR_RUN}/colour_ap.csv"):
        values = [v for k, v in r.items() if "ap" in k.lower()]
        if not values or not all(np.isfinite(float(v)) for v in values):
            problems.append(f"{DETR_RUN}/colour_ap.csv: no box AP in {r}")
    return problems


def _check_targets(w: Path) -> list[str]:
    """The cached train targets are SD's latents: 4 x 32 x 32 at 256 px, equal to the VAE's mean latent
    of the central square times SD's scaling factor 0.18215."""
    import numpy as np
    import torch
    from diffusers import AutoencoderKL

    from featinv import rowstore
    from featinv.data.shards import index_split, read_image
    from featinv.data.target_view import TargetView

    path = w / "data/targets/imagenet/train.zarr"
    if not path.exists():
        return [f"{path.relative_to(w)}: missing"]
    group = rowstore.open_complete(path)
    if list(group.attrs["latent_shape"]) != [4, 32, 32]:
        return [f"{path.relative_to(w)}: latents {group.attrs['latent_shape']}, not SD's 4 x 32 x 32 at 256 px"]
    entry = index_split(w / "data/shards/imagenet", "train", views=False)[0]
    vae = AutoencoderKL.from_pretrained(w / ROOT / "miniSD" / "vae").eval()
    with torch.no_grad():
        mean = vae.encode(TargetView(256)(read_image(entry))[None]).latent_dist.mean[0].numpy()
    stored = group["latents"][0].astype(np.float32)
    ratio = float(np.sum(stored * mean) / np.sum(mean * mean))
    if abs(ratio - SD_SCALING) > 1e-3:
        return [f"{path.relative_to(w)}: latents are {ratio:.5f} x the VAE's mean latent, not SD's scaling factor "
                f"{SD_SCALING} (vae/config.json scaling_factor, featinv.diffusion.codec)"]
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m featinv.rehearsal", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="write data/rehearsal/")
    sub.add_parser("check", help="after the paper commands: what the paper fixes, checked in their outputs")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare()
        return 0
    problems = check()
    for problem in problems:
        print(f"rehearsal: {problem}", file=sys.stderr)
    if not problems:
        print("ok: the rehearsal's outputs show what the paper fixes")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
