"""Evaluate one trained model's reconstructions (a sample store) against the originals.

- Cosine similarity per spatial position, with the conditioning backbone: each reconstruction goes
  through ``metrics.scoring`` (the backbone's eval preprocessing, or the whole image resized to its
  input size as the paper scores), its feature map is compared with the stored map of the original at
  every position, averaged over positions. Each backbone runs at the input size of its store.
- Top-5(1) match per evaluating backbone: the original's top-1 class (from that backbone's feature
  store) among the reconstruction's top 5 (equal to its top 1). The conditioning backbone gives
  Table 1; every backbone evaluating the ``cross_model_variant`` models gives Table 2.
- FID between all reconstructions and the originals as the diffusion model sees them (the target
  view at the sample resolution), on the features named in ``metrics.fid.features``.

- Mismatched: each reconstruction's cosine-sim against *another* image's original (the original half
  the split away, the pairing of the chance column): what a reconstruction scores without carrying
  information about its own image. The per-map cosine-sims are kept for paired comparisons between
  models of the same images (Table 1's unpooled − pooled).

- Pixel MSE of each reconstruction against the original's target view (in [0, 1] units), and
  cosine-sim on every evaluating source (``cosine_sim_by``: another backbone's map is a perceptual
  proxy the reconstruction was not made for, Table 2's idea).

- Oracles, through the same scoring path (the image at the sample resolution, the conditioning
  backbone through ``metrics.scoring``): ``oracle_copy`` scores the original itself, the ceiling of a
  perfect reconstruction at this resolution (``score_originals``: once per evaluating source and split,
  read by every model's evaluation, with the pooled features FID's real side takes); ``oracle_nearest_train`` scores, for each original, the
  training image (view) whose stored map is closest to the original's by cosine per position: what
  a model that only recalls its training set can reach (``metrics.oracles.nearest_train``; it needs
  the conditioning backbone's train feature store).

With several samples per map, a map's value is the mean over its samples; intervals are bootstrap
intervals over maps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from tqdm import tqdm

from featinv import rowstore
from featinv.backbones import Backbone, create_backbone
from featinv.sourceid import backbone_name
from featinv.config import Metrics
from featinv.data.target_view import view_images
from featinv.devices import resolve_device
from featinv.features.origin import store_backbone
from featinv.fileio import atomic_write_text, csv_text, sha256
from featinv.metrics import fid
from featinv.metrics.similarity import cosine_per_position, topk_match
from featinv.metrics.stats import Bootstrap, bootstrap_of, summarise



# What a sample store records of how it was sampled, carried into its metrics (Table 1 shows the
# control strength and guidance scale each model was sampled at, tuned or fixed).
SAMPLING_ATTRS = ("control_strength", "guidance_scale", "scheduler", "steps", "timestep_spacing", "seed")

def _batches(n: int, size: int, desc: str):
    return tqdm(range(0, n, size), desc=desc, unit="batch", mininterval=2.0)


@torch.inference_mode()
def backbone_outputs(backbone: Backbone, images: np.ndarray, batch_size: int, device: torch.device,
                     view: str = "eval_transform") -> dict[str, np.ndarray]:
    """``Backbone.of_images`` of (M, 3, R, R) uint8 images (a store's layout) on ``device``, each
    through ``view`` (``metrics.scoring``), as arrays: features, pooled, topk."""
    return backbone.to(device).of_images(images.transpose(0, 2, 3, 1), view, batch_size,
                                         progress=f"{backbone.name} on images").numpy()


def fid_extractor(name: str, weights: Mapping[str, str], batch_size: int, device: torch.device,
                  view: str = "eval_transform") -> Callable[[np.ndarray], np.ndarray]:
    """(M, 3, R, R) uint8 images -> (M, D) features for the Fréchet distance: pytorch-fid's Inception
    pool3 (``inception``) or a backbone's pooled features (through ``view``). The network is built once."""
    if name != fid.INCEPTION:
        backbone = create_backbone(name, weights=weights.get(name) or None)
        return lambda images: backbone_outputs(backbone, images, batch_size, device, view=view)["pooled"]
    model = fid.inception_model(weights.get(fid.INCEPTION) or None).to(device)

    @torch.inference_mode()
    def pool3(images: np.ndarray) -> np.ndarray:
        feats = []
        for i in _batches(len(images), batch_size, "inception"):
            x = torch.from_numpy(images[i:i + batch_size]).float().div(255).to(device)
            feats.append(model(x)[0].flatten(1).cpu().numpy())
        return np.concatenate(feats)

    return pool3


def original_views(shards: str | Path, split: str, keys: list[str], resolution: int) -> np.ndarray:
    """The originals of ``keys`` as the diffusion model sees them: (N, 3, R, R) uint8 target views."""
    return view_images(shards, split, resolution, keys).transpose(0, 3, 1, 2)


def unrelated_cosine(maps: np.ndarray) -> float:
    """Chance level of cosine-sim: the mean cosine per position between each original's map and the
    map of the original half the split away (another image; in class-ordered splits, another class)."""
    maps = maps.astype(np.float32)
    if len(maps) < 2:
        return float("nan")
    return float(cosine_per_position(maps, np.roll(maps, len(maps) // 2, axis=0)).mean())


def nearest_by_cosine(queries: np.ndarray, bank, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """For each (C, H, W) query map, the row of ``bank`` (N, C, H, W; numpy or zarr, read in blocks)
    with the highest mean cosine per position, and that cosine: (index, value) arrays of shape (Q,)."""
    def unit(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).flatten(2)  # (N, C, P)
        return t / t.norm(dim=1, keepdim=True).clamp_min(1e-8)

    q = unit(queries).permute(2, 0, 1)  # (P, Q, C)
    best_value = torch.full((len(queries),), -np.inf)
    best_index = torch.zeros(len(queries), dtype=torch.long)
    for start in range(0, bank.shape[0], block):
        b = unit(bank[start:start + block]).permute(2, 1, 0)  # (P, C, B)
        cos = torch.bmm(q, b).mean(0)  # (Q, B): mean over positions
        value, index = cos.max(1)
        better = value > best_value
        best_value[better], best_index[better] = value[better], index[better] + start
    return best_index.numpy(), best_value.numpy()


def score_images(backbone: Backbone, images: np.ndarray, ref_maps: np.ndarray, reference_top1: np.ndarray,
                 cfg: Metrics, device, boot: Bootstrap) -> dict[str, Any]:
    """Cosine-sim and top-5(1) match of candidate images (N, 3, R, R) against the originals' maps, seen
    as ``cfg.scoring`` says, with bootstrap intervals (a tuning cell; the oracles score their outputs)."""
    return score_outputs(backbone_outputs(backbone, images, cfg.batch_size, device, view=cfg.scoring),
                         ref_maps, reference_top1, boot)


def score_outputs(out: dict[str, np.ndarray], ref_maps: np.ndarray, reference_top1: np.ndarray,
                  boot: Bootstrap) -> dict[str, Any]:
    """``score_images`` from the images' ``backbone_outputs``."""
    return _summaries(cosine_per_position(ref_maps, out["features"]), out["topk"], reference_top1, boot)


def _summaries(cos: np.ndarray, topk: np.ndarray, reference_top1: np.ndarray, boot: Bootstrap) -> dict[str, Any]:
    return {"cosine_sim": summarise(cos.astype(np.float64), **boot),
            "top5": summarise(topk_match(reference_top1, topk, 5).astype(np.float64), **boot),
            "top1": summarise(topk_match(reference_top1, topk, 1).astype(np.float64), **boot)}


def _per_map(values: np.ndarray, n_maps: int) -> np.ndarray:
    return values.reshape(n_maps, -1).astype(np.float64).mean(axis=1)


def pixel_mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image mean squared error of two (M, 3, R, R) uint8 image arrays, in [0, 1] units."""
    diff = a.astype(np.float32) / 255 - b.astype(np.float32) / 255
    return (diff ** 2).reshape(len(a), -1).mean(axis=1)


def originals_arrays(topk: int, dim: int) -> rowstore.ArraySpec:
    """What ``score_originals`` keeps per original: its cosine-sim against its own stored map, its top-k
    classes and its pooled features."""
    return {"cosine_sim": ((), "float32", 0), "topk": ((topk,), "int64", -1), "pooled": ((dim,), "float32", 0),
            "keys": ((), "str", None)}


def score_originals(store: str | Path, shards: str | Path, cfg: Metrics, resolution: int, out: str | Path,
                    weights: Mapping[str, str] | None = None) -> None:
    """The originals of a feature store (its rows, as the diffusion model sees them: the target view at
    ``resolution``) through the store's own source as ``cfg.scoring`` says, once for every model
    evaluated on that source: per original the cosine-sim against its stored map (the copy oracle),
    its top-k classes and its pooled features (FID's real side where this backbone gives FID).
    Resumable in blocks of rows (``featinv.rowstore``)."""
    originals = rowstore.open_complete(store)
    keys = [str(k) for k in originals["keys"][:]]
    split = str(originals.attrs["split"])
    backbone = store_backbone(originals.attrs, (weights or {}).get(backbone_name(str(originals.attrs["backbone"]))) or None)
    attrs = {"backbone": str(originals.attrs["backbone"]), "split": split, "resolution": int(resolution),
             "scoring": cfg.scoring, "store_keys": sha256("\n".join(keys).encode())}
    batch = max(1, cfg.batch_size)
    group, resumed = rowstore.open_or_resume(out, len(keys), originals_arrays(5, backbone.fmap_shape[0]),
                                             rows_per_shard=batch * 16, rows_per_chunk=batch * 16, attrs=attrs)
    if not resumed:
        group["keys"][:] = np.array(keys, dtype=object)
    pending = rowstore.pending_batches(group, batch)
    if pending:
        views = original_views(shards, split, keys, resolution)
        device = resolve_device(cfg.device)
        backbone = backbone.to(device)
        writer = rowstore.BlockWriter(group)
        for rows in tqdm(pending, desc=f"{backbone.name} on the originals", unit="batch", mininterval=2.0):
            out_ = backbone_outputs(backbone, views[rows], batch, device, view=cfg.scoring)
            maps = originals["features"][rows[0]:rows[-1] + 1].astype(np.float32)
            writer.add(rows, {"cosine_sim": cosine_per_position(maps, out_["features"]).astype(np.float32),
                              "topk": out_["topk"].astype(np.int64), "pooled": out_["pooled"].astype(np.float32)})
    rowstore.finalize(out)


def _open_originals(path: str | Path, name: str, keys: list[str], resolution: int, scoring: str):
    """The ``score_originals`` store of source ``name``, checked against the samples it is read for."""
    group = rowstore.open_complete(path)
    attrs = dict(group.attrs)
    if attrs["backbone"] != name:
        raise ValueError(f"originals' scores {path} are of {attrs['backbone']}, not {name}")
    if (attrs["resolution"], attrs["scoring"]) != (resolution, scoring):
        raise ValueError(f"originals' scores {path} were made at {attrs['resolution']} px with scoring "
                         f"{attrs['scoring']!r}, the samples are {resolution} px scored with {scoring!r}: rerun score_originals")
    if [str(k) for k in group["keys"][:]] != keys:
        raise ValueError(f"originals' scores {path} hold other images than the samples (keys differ)")
    return group


def evaluate_samples(samples: str | Path, stores: dict[str, str | Path], originals: dict[str, str | Path],
                     shards: str | Path, cfg: Metrics, weights: Mapping[str, str] | None = None,
                     per_image_csv: str | Path | None = None, train_store: str | Path | None = None) -> dict[str, Any]:
    """Metrics of one sample store. ``stores`` maps each evaluating source (backbone, ``@layer`` for an
    intermediate one) to its feature store of the originals (same split, same rows), ``originals`` to
    its ``score_originals`` store; the conditioning source must be among them. Every evaluator scores
    cosine-sim (``cosine_sim_by``) and top-k match (``match``); the conditioning one also the baselines
    and oracles (the oracles on every evaluator's cosine too). ``train_store``: the conditioning
    source's train feature store, for ``oracle_nearest_train``."""
    weights = weights or {}
    if set(originals) != set(stores):
        raise ValueError(f"originals' scores of {sorted(originals)} given for the feature stores of {sorted(stores)}")
    group = rowstore.open_complete(samples)
    attrs = dict(group.attrs)
    model = attrs["model"]
    conditioning = model["backbone"]
    if conditioning not in stores:
        raise ValueError(f"no feature store of the conditioning backbone {conditioning} among {sorted(stores)}")
    keys = [str(k) for k in group["keys"][:]]
    images = group["images"][:]  # (N, S, 3, R, R)
    n, s = images.shape[:2]
    flat = images.reshape(n * s, *images.shape[2:])
    device = resolve_device(cfg.device)
    boot = bootstrap_of(cfg)

    cond_store = rowstore.open_complete(stores[conditioning])
    split = dict(cond_store.attrs)["split"]
    sampling = {k: attrs[k] for k in SAMPLING_ATTRS if k in attrs}  # the (tuned) settings the samples were made with
    result: dict[str, Any] = {"model": model, "samples": str(samples), "split": split, "sampling": sampling,
                              "n_images": n, "samples_per_map": s, "resolution": int(images.shape[-1]),
                              "confidence": cfg.confidence, "scoring": cfg.scoring, "match": {}, "cosine_sim_by": {}}
    per_image: dict[str, np.ndarray] = {}
    resolution = int(images.shape[-1])
    real_views = original_views(shards, split, keys, resolution)
    mse = pixel_mse(flat, np.repeat(real_views, s, axis=0))
    result["pixel_mse"] = summarise(_per_map(mse, n), **boot)
    # The nearest-train oracle's images: the training view nearest by the conditioning map.
    nearest_images = _nearest_train_images(cond_store, train_store, shards, resolution, cfg)
    # FID's features, when its network is an evaluator on its last map: the pooled outputs computed below
    fid_name = cfg.fid.features
    pooled: dict[str, np.ndarray] = {}
    for name in [conditioning] + [k for k in stores if k != conditioning]:
        store = rowstore.open_complete(stores[name])
        stored_keys = [str(k) for k in store["keys"][:]]
        if stored_keys != keys:
            raise ValueError(f"feature store {stores[name]} holds other images than {samples} (keys differ)")
        backbone = store_backbone(store.attrs, weights.get(backbone_name(name)) or None)
        recon = backbone_outputs(backbone, flat, cfg.batch_size, device, view=cfg.scoring)
        if name == fid_name:
            pooled["fake"] = recon["pooled"]
        reference = np.repeat(store["topk_indices"][:, 0], s)
        top5 = topk_match(reference, recon["topk"], 5)
        top1 = topk_match(reference, recon["topk"], 1)
        result["match"][name] = {"top5": summarise(_per_map(top5, n), **boot),
                                 "top1": summarise(_per_map(top1, n), **boot)}
        maps, top1_ref = store["features"][:].astype(np.float32), store["topk_indices"][:, 0]
        ref_maps = np.repeat(maps, s, axis=0)
        cos = cosine_per_position(ref_maps, recon["features"])
        result["cosine_sim_by"][name] = summarise(_per_map(cos, n), **boot)
        copy = _open_originals(originals[name], name, keys, resolution, cfg.scoring)
        if name == fid_name:
            pooled["real"] = copy["pooled"][:]
        oracles = {"oracle_copy": (real_views, _summaries(copy["cosine_sim"][:], copy["topk"][:], top1_ref, boot)),
                   "oracle_nearest_train": None if nearest_images is None else (nearest_images, score_outputs(
                       backbone_outputs(backbone, nearest_images, cfg.batch_size, device, view=cfg.scoring),
                       maps, top1_ref, boot))}
        for oracle, made in oracles.items():
            if made is None:
                result.setdefault(oracle, None)
                continue
            chosen, scored = made
            if name == conditioning:
                result[oracle] = {**scored, "pixel_mse": summarise(pixel_mse(chosen, real_views), **boot),
                                  "cosine_sim_by": {name: scored["cosine_sim"]}}
            else:
                result[oracle]["cosine_sim_by"][name] = scored["cosine_sim"]
        if name == conditioning:
            result["cosine_sim"] = result["cosine_sim_by"][name]
            result["cosine_sim_unrelated"] = unrelated_cosine(maps)
            # the honest baseline: each reconstruction against another image's original (chance's pairing)
            cos_mismatched = (cosine_per_position(np.roll(ref_maps, (n // 2) * s, axis=0), recon["features"])
                              if n >= 2 else np.full(n * s, np.nan, dtype=np.float32))
            result["cosine_sim_mismatched"] = summarise(_per_map(cos_mismatched, n), **boot)
            result["cosine_sim_per_map"] = {"keys": keys, "values": _per_map(cos, n).tolist()}  # paired comparisons
            per_image = {"cosine_sim": cos, "top5_match": top5, "top1_match": top1,
                         "cosine_sim_mismatched": cos_mismatched, "pixel_mse": mse}
    if result["oracle_nearest_train"] is not None and train_store is not None:
        train = rowstore.open_complete(train_store)
        result["oracle_nearest_train"].update(train_split=str(train.attrs["split"]), train_rows=int(train["keys"].shape[0]))

    if "real" not in pooled or "fake" not in pooled:
        extract = fid_extractor(fid_name, {**weights, fid.INCEPTION: cfg.fid.inception_weights},
                                cfg.batch_size, device, view=cfg.scoring)
        pooled = {"real": extract(real_views), "fake": extract(flat)}
    real, fake = pooled["real"], pooled["fake"]
    result["fid"] = {"features": fid_name, "dim": int(real.shape[1]), "n_real": len(real), "n_fake": len(fake),
                     "value": fid.frechet_distance(real, fake)}
    if per_image_csv:
        _write_per_image(per_image_csv, keys, s, per_image)
    return result


def _nearest_train_images(cond_store, train_store, shards, resolution: int, cfg: Metrics) -> np.ndarray | None:
    """For each original of ``cond_store``, the training view whose stored map is closest by cosine per
    position, as (N, 3, R, R) uint8 target views; None where the oracle is off."""
    if not cfg.oracles.nearest_train:
        return None
    if train_store is None:
        raise ValueError("metrics.oracles.nearest_train is on but no train feature store was given (--train-store)")
    train = rowstore.open_complete(train_store)
    if train.attrs["backbone"] != cond_store.attrs["backbone"]:
        raise ValueError(f"train store {train_store} is of {train.attrs['backbone']}, not {cond_store.attrs['backbone']}")
    index, _ = nearest_by_cosine(cond_store["features"][:].astype(np.float32), train["features"])
    train_keys = [str(k) for k in train["keys"][:]]
    return original_views(shards, str(train.attrs["split"]), [train_keys[i] for i in index], resolution)


def _write_per_image(path: str | Path, keys: list[str], s: int, values: dict[str, np.ndarray]) -> None:
    rows = [[key, j, *(float(v[i * s + j]) if v.dtype.kind == "f" else int(v[i * s + j]) for v in values.values())]
            for i, key in enumerate(keys) for j in range(s)]
    atomic_write_text(path, csv_text(["key", "sample", *values], rows, ".6f"))
