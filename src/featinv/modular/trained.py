"""The ``train_modular`` rule's work and what the analyses load: modular and classic inverses of the
forward model named in ``modular`` params, trained on the train split's images.

Images are the split's stored images at ``modular.image_size`` in [0, 1] RGB; the forward model sees
them normalised. Every stage's representations of the train split are computed once into a
representation store (:mod:`featinv.modular.representations`) and read per batch, so the forward
model never runs per training step and memory does not grow with the split.

On disk (``<model_dir>``): ``inverses.safetensors`` (state of ``{"modular": [...], "classic": [[...]],
"pred_one_hot": pred_OH^-1}``, loaded without unpickling), ``meta.json`` (the params, stages, representation shapes, final losses).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from featinv.cards import modular_card
from featinv.config import Modular, plain
from featinv.data.shards import load_manifest
from featinv.fileio import atomic_write_text, csv_text, write_json
from featinv.modular.forward import ForwardModel, load_forward
from featinv.modular.inverses import build_inverses, inverse_for
from featinv.modular.onehot import OneHotRows, one_hot
from featinv.modular.representations import fit_image, mean_of, stage_rows, write_representations
from featinv.plots import spread_rows
from featinv.modular.training import (
    FitArgs,
    Optimisation,
    Rows,
    classic_inverses,
    count_parameters,
    train_classic,
    train_modular,
)

# params that change the inverses (the analyses refuse inverses trained with other values)
INVERSE_KEYS = ("backbone", "groups", "image_size", "fit", "hidden", "depth", "heads", "steps", "batch_size", "lr",
                "lr_by_stage", "optimizer", "max_grad_norm", "val_every", "instances", "seed")


@dataclass
class Split:
    """One split's images in [0, 1] (N, 3, H, W), their class indices, label space, and where the
    shards carry object masks (COCO) each image's objects as (category id, (H, W) bool mask), else None."""

    pixels: torch.Tensor
    labels: torch.Tensor
    label_space: str
    objects: list[list[tuple[int, torch.Tensor]]] | None

    def category_masks(self, category: int) -> tuple[list[int], torch.Tensor]:
        """The images holding ``category`` and, for each, the union of all its instances (M, 1, H, W)."""
        objects = self.objects or []
        rows = [i for i, objs in enumerate(objects) if any(c == category for c, _ in objs)]
        masks = [torch.stack([m for c, m in objects[i] if c == category]).any(0) for i in rows]
        return rows, torch.stack(masks)[:, None] if masks else torch.zeros(0, 1, *self.pixels.shape[-2:], dtype=torch.bool)


def split_index(shards: str | Path, split: str) -> list:
    """A split's stored images (not the cached augmented views, FeatInv's training data), in manifest order."""
    from featinv.data.shards import index_split

    return index_split(shards, split, views=False)


def split_size(shards: str | Path, split: str) -> int:
    """Images in a split (its stored images, not the cached views)."""
    return len(split_index(shards, split))


def has_objects(shards: str | Path) -> bool:
    """Whether the shards carry object masks (COCO)."""
    from featinv.data.shards import load_manifest

    return load_manifest(shards).get("label_space") == "coco"


def load_split(shards: str | Path, split: str, size: tuple[int, int], fit: str = "crop",
               rows: Sequence[int] | None = None) -> Split:
    """A split's images (or those at ``rows``, in that order) at ``size`` (H, W): ``fit`` ``crop`` =
    the largest central box of that aspect ratio, resized; ``resize`` = the whole image resized, its
    aspect ratio not kept (the paper's ViT 224 x 224 and DETR 480 x 640 inputs). Masks follow the
    same geometry; ``objects`` is a list (empty for an image without objects) for COCO shards."""
    index = split_index(shards, split)
    return _load_entries(shards, index if rows is None else [index[r] for r in rows], size, fit)


def _load_entries(shards: str | Path, index: list, size: tuple[int, int], fit: str) -> Split:
    from featinv.data.shards import load_manifest, read_image

    pixels = np.stack([np.asarray(fit_image(read_image(e), size, fit)) for e in index]).astype(np.float32) / 255.0
    objects = _fitted_objects(index, size, fit) if has_objects(shards) else None
    return Split(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), torch.tensor([e.cls for e in index]),
                 load_manifest(shards).get("label_space", ""), objects)


def _fitted_objects(index: list, size: tuple[int, int], fit: str) -> list[list[tuple[int, torch.Tensor]]]:
    """The entries' (category, mask) objects, masks at ``size`` with the images' geometry."""
    from PIL import Image

    from featinv.data.shards import read_masks

    def fitted(mask):
        return torch.from_numpy(np.asarray(fit_image(Image.fromarray(mask.astype(np.uint8) * 255), size, fit,
                                                     Image.Resampling.NEAREST)) > 127)

    return [[(c, fitted(m)) for m, c in zip(*a)] if a is not None else [] for a in read_masks(index)]


def split_objects(shards: str | Path, split: str, size: tuple[int, int], fit: str,
                  block: int = 256) -> Iterator[list[tuple[int, torch.Tensor]]]:
    """Each image's objects (as :attr:`Split.objects`), read block by block from the annotations
    alone (no image is decoded)."""
    if not has_objects(shards):
        raise ValueError(f"the {split} split of {shards} has no object annotations (COCO shards)")
    index = split_index(shards, split)
    for start in range(0, len(index), block):
        yield from _fitted_objects(index[start:start + block], size, fit)


def split_parts(shards: str | Path, split: str, size: tuple[int, int], fit: str, batch: int,
                rows: Sequence[int] | None = None) -> Iterator[tuple[list[int], Split]]:
    """The split (or its ``rows``) as consecutive parts of at most ``batch`` images: (their rows,
    :func:`load_split` of them), so an analysis holds one part at a time whatever the split's size.
    The split is indexed once."""
    index = split_index(shards, split)
    rows = list(range(len(index))) if rows is None else list(rows)
    for start in range(0, len(rows), batch):
        part = rows[start:start + batch]
        yield part, _load_entries(shards, [index[r] for r in part], size, fit)


def task_targets(split: Split, logits: torch.Tensor) -> tuple[torch.Tensor, str]:
    """What accuracy is measured against: the split's labels where they are the model's classes
    (ImageNet-1k), otherwise the model's own top-1 on these images (the demo's classes are
    photographs, not ImageNet classes); and the name of that choice."""
    if split.label_space == "imagenet-1k" and logits.shape[-1] == 1000:
        return split.labels, "label"
    return logits.argmax(-1), "original top-1"


@torch.no_grad()
def representations(forward: ForwardModel, pixels: torch.Tensor, batch: int = 64) -> list[torch.Tensor]:
    """[x_0 (normalised images), x_1, ..., x_n] of ``pixels`` ([0, 1] RGB)."""
    from tqdm import tqdm

    starts = range(0, len(pixels), batch)
    parts = [forward.staged.representations(forward.normalise(pixels[i:i + batch]))
             for i in tqdm(starts, desc=f"{forward.name} stages", unit="batch", disable=len(starts) < 4)]
    return [torch.cat([p[j] for p in parts]) for j in range(len(parts[0]))]


def _inverse_params(cfg: Modular) -> dict[str, Any]:
    """The values of ``INVERSE_KEYS``, as ``meta.json`` records them."""
    return {k: plain(getattr(cfg, k)) for k in INVERSE_KEYS}


def _inverse_kw(cfg: Modular) -> dict[str, int]:
    return {"hidden": cfg.hidden, "depth": cfg.depth, "heads": cfg.heads}


def _bundle(forward: ForwardModel, cfg: Modular) -> nn.ModuleDict:
    """Untrained modular inverses, classic paths, pred_OH^-1 (the prediction-head inverse on
    one-hot x_pred, :mod:`featinv.modular.prediction`) and, where x_1 is a map, the local inverse of
    the first stage (each position to its own patch; the paper's local inverse backbone, section 4.5;
    a ViT's patch inverse is local already)."""
    with torch.no_grad():
        probe = forward.staged.representations(forward.normalise(torch.zeros(1, 3, *forward.image_size)))
    pred = forward.staged.stage_list[-1].inverse
    bundle = nn.ModuleDict({"modular": build_inverses(forward.staged, probe, **_inverse_kw(cfg)),
                            "classic": classic_inverses(forward.staged, probe, **_inverse_kw(cfg)),
                            "pred_one_hot": inverse_for(pred, probe[-2], one_hot(probe[-1], _boxes(forward)),
                                                        **_inverse_kw(cfg))})
    if probe[1].ndim == 4:  # the first stage gives a map (a CNN's stem, DETR's bb): its local inverse too
        bundle["local_first"] = inverse_for("local", probe[0], probe[1], **_inverse_kw(cfg))
    return bundle


def _boxes(forward: ForwardModel) -> int:
    """Box channels at the end of x_pred (DETR: 4)."""
    return forward.staged.boxes


def _paths(bundle: nn.ModuleDict) -> tuple[nn.ModuleList, nn.ModuleList]:
    """A bundle's modular inverses (inverse j at index j-1) and classic full-path inverses."""
    return cast(nn.ModuleList, bundle["modular"]), cast(nn.ModuleList, bundle["classic"])


def _train_one_hot(inverse: nn.Module, reps: Sequence[Rows], forward: ForwardModel, args: FitArgs) -> list[float]:
    """pred_OH^-1 trained as the modular pred^-1 is (same steps, batches, learning rate, seed), on
    one-hot x_pred."""
    n, boxes = len(reps) - 1, _boxes(forward)
    optim = args["optim"]
    if optim.val is not None:
        optim = replace(optim, val=[optim.val[n - 1], one_hot(optim.val[n], boxes)])
    # train_modular seeds stage j with seed + j
    one: FitArgs = {**args, "seed": args["seed"] + n - 1, "names": [forward.staged.names[-1]], "optim": optim}
    return train_modular([inverse], [reps[n - 1], OneHotRows(reps[n], boxes)], **one)[0]


MEAN_IMAGE = "baseline.mean_image"  # the train split's mean image, saved beside the inverses' weights
REPRESENTATIONS = "train-representations.zarr"  # in the model directory
VAL_ROWS = 128  # validation images the best-checkpoint choice is scored on (spread over the split)


def _instance_prefix(k: int) -> str:
    """Instance 0's weights keep the plain names; further instances are prefixed."""
    return "" if k == 0 else f"instance{k}."


def _optimisation(cfg: Modular, forward: ForwardModel, shards: str | Path, model_dir: Path,
                  progress: bool) -> Optimisation:
    """``modular``'s optimiser settings; with ``val_every``, the val split's representations (a
    spread subset, in memory) to choose each component's best weights on."""
    val = None
    if cfg.val_every:
        store = write_representations(forward, shards, "val", model_dir / "val-representations.zarr",
                                      progress=progress)
        rows = stage_rows(store)
        pick = spread_rows(len(rows[0]), min(VAL_ROWS, len(rows[0])))
        val = [r[pick] for r in rows]
    return Optimisation(cfg.optimizer, dict(cfg.lr_by_stage), cfg.max_grad_norm, cfg.val_every, val)


def train_inverses(cfg: Modular, shards: str | Path, model_dir: str | Path, loss_csv: str | Path,
                   weights: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train modular (eq. 1) and classic inverses of every stage on the train split; save them with
    the split's mean image (the baseline). The split's stage representations are computed once into
    a rowstore in ``model_dir`` and read per batch, so memory does not grow with the split."""
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    forward = load_forward(cfg, weights)
    model_dir = Path(model_dir)
    reps = stage_rows(write_representations(forward, shards, "train", model_dir / REPRESENTATIONS, progress=progress))
    mean_image = forward.pixels(mean_of(reps[0]))
    names = forward.staged.names
    optim = _optimisation(cfg, forward, shards, model_dir, progress)
    tensors: dict[str, torch.Tensor] = {MEAN_IMAGE: mean_image.contiguous()}
    losses_by_instance = []
    for k in range(cfg.instances):  # independent instances: their own initialisation and batches
        torch.manual_seed(cfg.seed + 1000 * k)
        bundle = _bundle(forward, cfg)
        args: FitArgs = {"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed + 1000 * k,
                         "progress": progress, "names": names, "optim": optim}
        modular, classic = _paths(bundle)
        losses_by_instance.append({"modular": train_modular(modular, reps, **args),
                                   "classic": train_classic(classic, reps, **args),
                                   "pred_one_hot": [_train_one_hot(bundle["pred_one_hot"], reps, forward, args)]})
        if "local_first" in bundle:  # trained as the modular inverse of stage 1 is
            first: FitArgs = {**args, "names": names[:1]}
            losses_by_instance[-1]["local_first"] = train_modular([bundle["local_first"]], reps[:2], **first)
        tensors |= {_instance_prefix(k) + key: v.contiguous() for key, v in bundle.state_dict().items()}
    model_dir.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    tmp = model_dir / "inverses.safetensors.partial"
    save_file(tensors, str(tmp))
    tmp.replace(model_dir / "inverses.safetensors")
    losses = losses_by_instance[0]
    meta = {"params": _inverse_params(cfg), "stages": names,
            "shapes": [list(r.shape[1:]) for r in reps], "n_train": len(reps[0]),
            "parameters": {"modular": [count_parameters(m) for m in _paths(bundle)[0]],
                           "classic": [count_parameters(c) for c in _paths(bundle)[1]],
                           "pred_one_hot": count_parameters(bundle["pred_one_hot"]),
                           "local_first": count_parameters(bundle["local_first"]) if "local_first" in bundle else 0},
            "final_loss": {kind: [h[-1] for h in hist] for kind, hist in losses.items()},
            "instances": cfg.instances,
            "final_loss_by_instance": [{kind: [h[-1] for h in hist] for kind, hist in li.items()}
                                       for li in losses_by_instance],
            "config": plain(cfg),  # the whole modular section: ModularInversion.from_pretrained needs no params file
            "seconds": time.perf_counter() - started}
    write_json(model_dir / "meta.json", meta)
    modular_card(model_dir, meta, cfg.backbone, load_manifest(shards)["dataset"], meta["seconds"],
                 model_dir.as_posix())
    stage_of = {"modular": names, "classic": names, "pred_one_hot": [names[-1]], "local_first": [names[0]]}
    rows = [[step, loss, kind, stage_of[kind][j]] for kind, hist in losses.items() for j, h in enumerate(hist)
            for step, loss in enumerate(h, 1)]
    atomic_write_text(loss_csv, csv_text(["step", "loss", "path", "stage"], rows, ".6g"))
    return {k: v for k, v in meta.items() if k != "params"}


@dataclass
class Trained:
    forward: ForwardModel
    modular: nn.ModuleList  # inverse j at index j-1
    classic: nn.ModuleList  # full-path inverse from stage j at index j-1
    meta: dict[str, Any]
    params: Modular  # the params section they were loaded under (= trained with)
    mean_image: torch.Tensor | None = None  # (1, 3, H, W) in [0, 1]: the train split's mean, the baseline
    instances: list[tuple[nn.ModuleList, nn.ModuleList]] = field(default_factory=list)  # (modular, classic), 0 first
    pred_one_hot: nn.Module | None = None  # pred_OH^-1 (instance 0): x_pred as one-hot -> x_{n-1}
    model_dir: Path | None = None  # where they were loaded from (with the train split's representation store)
    local_first: nn.Module | None = None  # local inverse of stage 1 (instance 0), where x_1 is a map


def load_trained(cfg: Modular, model_dir: str | Path, weights: str | None = None) -> Trained:
    """The forward model and the inverses ``train_inverses`` saved under ``model_dir``."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    path = model_dir / "inverses.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: train the inverses first (featinv train-modular)")
    meta = json.loads((model_dir / "meta.json").read_text())
    wanted = _inverse_params(cfg)
    changed = sorted(k for k in INVERSE_KEYS if meta["params"].get(k) != wanted[k])
    if changed:
        raise ValueError(f"inverses in {model_dir} were trained with other modular params ({', '.join(changed)}): "
                         f"retrain them (featinv train-modular)")
    forward = load_forward(cfg, weights)
    tensors = load_file(str(path))
    mean_image = tensors.pop(MEAN_IMAGE, None)
    instances = []
    for k in range(int(meta.get("instances", 1))):
        prefix = _instance_prefix(k)
        own = {key[len(prefix):]: v for key, v in tensors.items()
               if key.startswith(prefix) and (k or not key.startswith("instance"))}
        bundle = _bundle(forward, cfg)
        bundle.load_state_dict(own, strict=True)
        modular, classic = _paths(bundle)
        instances.append((modular.eval(), classic.eval()))
        if k == 0:
            pred_one_hot = bundle["pred_one_hot"].eval()
            local_first = bundle["local_first"].eval() if "local_first" in bundle else None
    return Trained(forward, *instances[0], meta, cfg, mean_image, instances, pred_one_hot, model_dir, local_first)
