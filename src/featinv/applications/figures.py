"""The first paper's application figures from a trained (unpooled) FeatInv model: concept steering
(FeatInv-Viz, Fig 4), interpolation (Fig 5), spatial composition (Fig 6), and the qualitative
comparison of every trained model (Fig 3) with several samples per map. Each writes a PNG and a CSV.

Reconstructions are scored by the conditioning backbone itself: its feature map of the
reconstruction (through its own eval preprocessing) against the map that conditioned it, cosine per
spatial position averaged over positions (the Table 1 metric).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from featinv import rowstore
from featinv.applications.arithmetic import (
    compose,
    image_mask,
    interpolate,
    outline,
    region_mask,
)
from featinv.applications.concepts import SubspaceConcepts
from featinv.applications.steering import concept_mask, featinv_viz
from featinv.config import (
    ApplicationsComposition, ApplicationsConcepts, ApplicationsInterpolation, ApplicationsQualitative, Diffusion, Sampling,
)
from featinv.fileio import atomic_write_text, csv_text


class FeatInvGenerator:
    """FeatInv as a function: (feature maps (B, C, h, w), seeds) -> images (B, 3, R, R) in [0, 1]; the
    starting noise of a row depends only on its seed, so equal seeds give comparable images. A
    :class:`~featinv.diffusion.pipeline.FeatInvPipeline` at the ``sampling`` section's settings."""

    def __init__(self, base_source: str, model_dir: str | Path, diffusion: Diffusion, sampling: Sampling):
        from featinv.devices import resolve_device
        from featinv.diffusion.pipeline import FeatInvPipeline
        from featinv.diffusion.sample import control_strength

        self.pipe = FeatInvPipeline.from_pretrained(model_dir, base=base_source, device=str(resolve_device(diffusion.device)),
                                                    resolution=diffusion.base.resolution, scheduler=sampling.scheduler,
                                                    timestep_spacing=sampling.timestep_spacing)
        self.net = self.pipe.controlnet
        if self.net.meta["variant"] != "unpooled":
            raise ValueError(f"{model_dir} is a {self.net.meta['variant']} model: the applications edit spatial "
                             f"feature maps and need an unpooled one")
        self.sampling = sampling
        self.strength = control_strength(sampling, self.net.meta["backbone"])
        self.batch_size = sampling.batch_size or 32

    def __call__(self, fmaps: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        out = []
        for i in range(0, len(fmaps), self.batch_size):
            rows = slice(i, i + self.batch_size)
            images = self.pipe(feature_maps=fmaps[rows].float(), num_inference_steps=self.sampling.steps,
                               guidance_scale=self.sampling.guidance_scale, control_strength=self.strength,
                               hint_guidance=self.sampling.hint_guidance,
                               generator=[torch.Generator().manual_seed(int(s)) for s in seeds[rows]]).images
            out.append(torch.stack([torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1) for im in images]).float() / 255)
        return torch.cat(out)


class MapScorer:
    """Cosine per position between a backbone's map of images and given maps of a feature store: the
    images go through the store's backbone, at its input size, seen as the store's images were seen."""

    def __init__(self, store: str | Path, weights: str | None, device: torch.device, batch_size: int = 32):
        from featinv.features.origin import store_backbone, store_view

        attrs = rowstore.open_complete(store).attrs
        self.backbone = store_backbone(attrs, weights)
        self.view = store_view(attrs)
        self.device = device
        self.batch_size = batch_size

    def __call__(self, images: torch.Tensor, maps: torch.Tensor) -> np.ndarray:
        from featinv.metrics.evaluate import backbone_outputs
        from featinv.metrics.similarity import cosine_per_position

        uint8 = (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        feats = backbone_outputs(self.backbone, uint8, self.batch_size, self.device, view=self.view)["features"]
        return cosine_per_position(feats, maps.float())


def _store(path: str | Path):
    group = rowstore.open_complete(path)
    return group, [str(k) for k in group["keys"][:]]


def _maps(group, rows: Sequence[int] | np.ndarray) -> torch.Tensor:
    return torch.from_numpy(group["features"].get_orthogonal_selection((np.asarray(rows),)).astype(np.float32))


def _originals(shards: str | Path, split: str, keys: list[str], resolution: int) -> torch.Tensor:
    from featinv.data.target_view import view_images

    return torch.from_numpy(view_images(shards, split, resolution, keys)).permute(0, 3, 1, 2).float() / 255


def _check_rows(rows: Sequence[int], n: int, what: str) -> None:
    bad = [r for r in rows if not 0 <= r < n]
    if bad:
        raise ValueError(f"{what}: rows {bad} are outside the store's {n} feature maps")


def _figure(panels: Sequence[Sequence[tuple[torch.Tensor | None, str]]], path: Path, scale: float = 1.3) -> None:
    """A grid of (image (3, H, W) in [0, 1], title) panels, one list per row."""
    from featinv.plots import pyplot, save_figure

    plt = pyplot()

    n_rows, n_cols = len(panels), max(len(r) for r in panels)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(scale * n_cols, scale * n_rows + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, row in enumerate(panels):
        for j, (img, title) in enumerate(row):
            if img is not None:
                axes[i, j].imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
            axes[i, j].set_title(title, fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def _paint(img: torch.Tensor, mask: torch.Tensor, colour=(1.0, 0.0, 0.0)) -> torch.Tensor:
    out = img.clone()
    for c, v in enumerate(colour):
        out[c][mask] = v
    return out


def concepts_figure(gen: FeatInvGenerator, train_store: str | Path, val_store: str | Path, shards: str | Path,
                    split: str, cfg: ApplicationsConcepts, out_png: str | Path, out_csv: str | Path) -> list[list]:
    """FeatInv-Viz (Fig 4): MCD concepts of one class from the train maps, steered on its val maps."""
    from featinv.data.shards import load_manifest

    classes = load_manifest(shards)["classes"]
    if cfg.class_name not in classes:
        raise ValueError(f"applications.concepts.class_name: '{cfg.class_name}' is not a class of the dataset "
                         f"({', '.join(classes[:12])}{', ...' if len(classes) > 12 else ''})")
    cls = classes.index(cfg.class_name)
    train, _ = _store(train_store)
    val, val_keys = _store(val_store)
    train_rows = np.flatnonzero(train["labels"][:] == cls)
    val_rows = np.flatnonzero(val["labels"][:] == cls)[: cfg.images]
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise ValueError(f"class '{cfg.class_name}' has {len(train_rows)} train and {len(val_rows)} {split} maps")
    bank = SubspaceConcepts.discover(_maps(train, train_rows), cfg.k, cfg.variance, seed=cfg.seed,
                                     clustering=cfg.clustering)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    keys = [val_keys[r] for r in val_rows]
    maps = _maps(val, val_rows)
    originals = _originals(shards, split, keys, gen.pipe.base.resolution)
    recon = gen(maps, [seeds[0]] * len(maps))
    rows, panels = [], []
    for i, key in enumerate(keys):
        parts = bank.decompose(maps[i])
        norm = float(maps[i].norm())
        row = [(originals[i], key), (recon[i], "reconstruction")]
        for c, name in enumerate(tqdm(bank.names, desc=f"FeatInv-Viz {key}", unit="concept")):
            distance = featinv_viz(gen, parts, c, seeds, cfg.factor)
            mask = concept_mask(distance, cfg.threshold)
            shaded = originals[i] * (0.25 + 0.75 * mask.float())  # unaffected pixels dimmed
            row.append((shaded, f"{name} ({bank.sizes[c]}d)"))
            rows.append([key, name, bank.sizes[c], float(parts[c].norm()) / norm, float(mask.float().mean()),
                         float(distance.max()), float(distance.median())])
        panels.append(row)
    _figure(panels, Path(out_png))
    header = ["key", "concept", "dims", "norm_share", "mask_fraction", "distance_max", "distance_median"]
    atomic_write_text(out_csv, csv_text(header, rows, ".6g"))
    return rows


def interpolation_figure(gen: FeatInvGenerator, scorer: MapScorer, store: str | Path, shards: str | Path, split: str,
                         cfg: ApplicationsInterpolation, out_png: str | Path, out_csv: str | Path) -> list[list]:
    """Fig 5: reconstructions of (1 - alpha) phi_a + alpha phi_b, each labelled with the cosine between
    its backbone map and the combined map."""
    group, keys = _store(store)
    rows, panels = [], []
    for a, b in cfg.pairs:
        _check_rows([a, b], len(keys), "applications.interpolation.pairs")
        phi = _maps(group, [a, b])
        combined = interpolate(phi[0], phi[1], cfg.alphas)
        recon = gen(combined, [cfg.seed] * len(combined))
        cos = scorer(recon, combined)
        originals = _originals(shards, split, [keys[a], keys[b]], gen.pipe.base.resolution)
        row = [(originals[0], keys[a])]
        for alpha, img, c in zip(cfg.alphas, recon, cos):
            row.append((img, f"alpha={alpha:g} cos={c:.3f}"))
            rows.append([keys[a], keys[b], alpha, float(c)])
        panels.append(row + [(originals[1], keys[b])])
    _figure(panels, Path(out_png))
    atomic_write_text(out_csv, csv_text(["key_a", "key_b", "alpha", "cosine_sim"], rows, ".6g"))
    return rows


def composition_figure(gen: FeatInvGenerator, scorer: MapScorer, store: str | Path, shards: str | Path, split: str,
                       cfg: ApplicationsComposition, out_png: str | Path, out_csv: str | Path) -> list[list]:
    """Fig 6: phi_a with the region ``box`` of its grid taken from phi_b; the region outlined on the
    reconstruction at image scale."""
    group, keys = _store(store)
    rows, panels = [], []
    for a, b in cfg.pairs:
        _check_rows([a, b], len(keys), "applications.composition.pairs")
        phi = _maps(group, [a, b])
        mask = region_mask((phi.shape[-2], phi.shape[-1]), cfg.box)
        maps = torch.stack([phi[0], phi[1], compose(phi[0], phi[1], mask)])
        recon = gen(maps, [cfg.seed] * 3)
        cos = scorer(recon, maps)
        originals = _originals(shards, split, [keys[a], keys[b]], gen.pipe.base.resolution)
        edge = outline(image_mask(mask, (recon.shape[-2], recon.shape[-1])))
        panels.append([(originals[0], keys[a]), (originals[1], keys[b]), (recon[0], f"a cos={cos[0]:.3f}"),
                       (recon[1], f"b cos={cos[1]:.3f}"), (_paint(recon[2], edge), f"a + b in box cos={cos[2]:.3f}")])
        rows += [[keys[a], keys[b], name, float(c), float(mask.float().mean())]
                 for name, c in zip(("a", "b", "composed"), cos)]
    _figure(panels, Path(out_png))
    atomic_write_text(out_csv, csv_text(["key_a", "key_b", "map", "cosine_sim", "region_fraction"], rows, ".6g"))
    return rows


def qualitative_figure(sample_stores: dict[str, str | Path], per_image: dict[str, str | Path], shards: str | Path,
                       split: str, cfg: ApplicationsQualitative, out_png: str | Path, out_csv: str | Path) -> list[list]:
    """Fig 3: seeded random evaluation maps; originals next to every trained model's reconstruction,
    each labelled with its cosine-sim (from the evaluation's per-image CSV)."""
    import csv

    names = list(sample_stores)
    groups = {m: _store(p) for m, p in sample_stores.items()}
    keys = groups[names[0]][1]
    rng = np.random.default_rng(cfg.seed)
    rows_idx = np.sort(rng.choice(len(keys), size=min(cfg.images, len(keys)), replace=False))
    pick = [keys[r] for r in rows_idx]
    cos: dict[str, dict[str, float]] = {}
    for m, path in per_image.items():
        with open(path) as fh:
            cos[m] = {r["key"]: float(r["cosine_sim"]) for r in csv.DictReader(fh) if r["sample"] == "0"}
    resolution = groups[names[0]][0]["images"].shape[-1]
    originals = _originals(shards, split, pick, resolution)
    panels, rows = [], []
    for i, key in enumerate(pick):
        row = [(originals[i], key)]
        for m in names:
            group, store_keys = groups[m]
            r = store_keys.index(key)
            img = torch.from_numpy(group["images"][r, 0].astype(np.float32) / 255)
            row.append((img, f"{m}\ncos={cos[m][key]:.3f}"))
            rows.append([key, m, cos[m][key]])
        panels.append(row)
    _figure(panels, Path(out_png), scale=1.5)
    atomic_write_text(out_csv, csv_text(["key", "model", "cosine_sim"], rows, ".6g"))
    return rows


def variability_figure(gen: FeatInvGenerator, scorer: MapScorer, store: str | Path, shards: str | Path, split: str,
                       cfg: ApplicationsQualitative, out_png: str | Path, out_csv: str | Path) -> list[list]:
    """Several samples (seeds) per feature map: the variability the supplement shows."""
    group, keys = _store(store)
    rng = np.random.default_rng(cfg.seed)
    pick = np.sort(rng.choice(len(keys), size=min(cfg.images, len(keys)), replace=False))
    maps = _maps(group, pick)
    n = cfg.samples
    recon = gen(maps.repeat_interleave(n, 0), [cfg.seed + s for _ in pick for s in range(n)])
    cos = scorer(recon, maps.repeat_interleave(n, 0))
    originals = _originals(shards, split, [keys[r] for r in pick], gen.pipe.base.resolution)
    panels, rows = [], []
    for i, r in enumerate(pick):
        row = [(originals[i], keys[r])]
        for s in range(n):
            row.append((recon[i * n + s], f"seed {cfg.seed + s} cos={cos[i * n + s]:.3f}"))
            rows.append([keys[r], cfg.seed + s, float(cos[i * n + s])])
        panels.append(row)
    _figure(panels, Path(out_png))
    atomic_write_text(out_csv, csv_text(["key", "seed", "cosine_sim"], rows, ".6g"))
    return rows
