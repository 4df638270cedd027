"""Side-by-side reports from the metric JSONs of several models of the same images.

- :func:`write_comparison` (``results/comparison/<dataset>/<source>``): FeatInv (unpooled, pooled)
  beside the deterministic inverse of the same map (:mod:`featinv.diffusion.inverse`) and the copy
  and nearest-train oracles: cosine-sim, top-5(1) match, FID, pixel MSE and cosine-sim on every
  other evaluating backbone (a perceptual proxy none of the models was made for).
- :func:`write_layer_study` (``results/layers/<dataset>/<backbone>``): one backbone's unpooled FeatInv
  at its last map and at an intermediate layer, each scored on its own layer and on the last.

Each writes a CSV, and a figure: the originals above each model's reconstructions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


from featinv import rowstore
from featinv.sourceid import LAST, split_source
from featinv.data.target_view import view_images
from featinv.fileio import atomic_write_text, csv_text
from featinv.plots import hwc, labelled_grid, spread_rows

METHODS = {"unpooled": "FeatInv (spatial map)", "pooled": "FeatInv (pooled)", "inverse": "deterministic inverse"}
ORACLES = {"oracle_copy": "copy (oracle)", "oracle_nearest_train": "nearest train (oracle)"}
NAN = float("nan")


def _mean(summary: dict[str, float] | None) -> float:
    return NAN if summary is None else float(summary["mean"])


def _interval(summary: dict[str, float] | None) -> list[float]:
    return [NAN] * 3 if summary is None else [summary["mean"], summary["ci_low"], summary["ci_high"]]


def _by_variant(metrics: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    sources = {m["model"]["backbone"] for m in metrics}
    if len(sources) != 1:
        raise ValueError(f"a comparison is of one source's models, got {sorted(sources)}")
    keys = {tuple(m["cosine_sim_per_map"]["keys"]) for m in metrics if "cosine_sim_per_map" in m}
    if len(keys) > 1:
        raise ValueError("the models scored different images")
    return {m["model"]["variant"]: m for m in metrics}


def comparison_rows(metrics: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(header, rows): one row per model (unpooled, pooled, inverse, as present), then the oracles."""
    models = _by_variant(metrics)
    source = next(iter(models.values()))["model"]["backbone"]
    others = sorted({e for m in models.values() for e in m.get("cosine_sim_by", {}) if e != source})
    level = round(100 * next(iter(models.values()))["confidence"])
    header = ["method", "variant"]
    for name in ("cosine_sim", "top5_match", "top1_match", "pixel_mse"):
        header += [name, f"{name}_ci{level}_low", f"{name}_ci{level}_high"]
    header += ["fid"] + [f"cosine_sim[{o}]" for o in others]
    rows = []
    for variant, label in METHODS.items():
        m = models.get(variant)
        if m is None:
            continue
        match = m["match"][source]
        cells: list[Any] = [label, variant]
        for summary in (m["cosine_sim"], match["top5"], match["top1"], m.get("pixel_mse")):
            cells += _interval(summary)
        cells += [m["fid"]["value"]] + [_mean(m.get("cosine_sim_by", {}).get(o)) for o in others]
        rows.append(cells)
    reference = models.get("unpooled") or next(iter(models.values()))
    for oracle, label in ORACLES.items():
        o = reference.get(oracle)
        if o is None:
            continue
        cells = [label, "oracle"]
        for summary in (o["cosine_sim"], o["top5"], o["top1"], o.get("pixel_mse")):
            cells += _interval(summary)
        cells += [NAN] + [_mean(o.get("cosine_sim_by", {}).get(e)) for e in others]
        rows.append(cells)
    return header, rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "—" if value != value else f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def comparison_markdown(header: list[str], rows: list[list[Any]], source: str, dataset: str) -> str:
    others = [h for h in header if h.startswith("cosine_sim[")]
    md_header = ["method", "cosine-sim", "top5 match", "top1 match", "pixel MSE", "FID", *others]
    body = []
    for r in rows:
        cells = [r[0]]
        for i in (2, 5, 8, 11):
            cells.append("—" if r[i] != r[i] else f"{r[i]:.3f} [{r[i + 1]:.3f}, {r[i + 2]:.3f}]")
        cells += [_fmt(v) for v in r[14:]]
        body.append(cells)
    lines = ["| " + " | ".join(md_header) + " |", "|" + "---|" * len(md_header)]
    lines += ["| " + " | ".join(c) + " |" for c in body]
    return (f"# FeatInv beside a deterministic inverse ({dataset}, {source})\n\n"
            "The same feature map, inverted by FeatInv's ControlNet on the frozen diffusion model (sampled) and "
            "by a plain decoder trained with pixel MSE on the same train split and views (deterministic). "
            f"cosine-sim and top5(1) match as in Table 1 ({source}); pixel MSE against the original's target "
            "view in [0, 1] units; FID as in Table 1; cosine-sim[other]: the cosine per position on another "
            "backbone's last map, which none of the models was trained to match. Oracles: the original itself "
            "(copy) and the nearest training view by the map (nearest train).\n\n" + "\n".join(lines) + "\n")


def _grid(samples: dict[str, str | Path], shards: str | Path, split: str, n: int, out_png: str | Path,
          title: str) -> None:
    """Originals in the top row, then the first sample of each store (same keys), one row per store."""
    groups = {label: rowstore.open_complete(path) for label, path in samples.items()}
    first = next(iter(groups.values()))
    rows_idx = spread_rows(first["keys"].shape[0], n)
    keys = [str(k) for k in first["keys"].get_orthogonal_selection((rows_idx,))]
    resolution = int(first["images"].shape[-1])
    rows, labels = [list(view_images(shards, split, resolution, keys))], ["original"]
    for label, group in groups.items():
        if [str(k) for k in group["keys"].get_orthogonal_selection((rows_idx,))] != keys:
            raise ValueError(f"the sample stores hold different images ({label})")
        images = group["images"].get_orthogonal_selection((rows_idx,))
        rows.append([hwc(images[i, 0]) for i in range(len(keys))])
        labels.append(label)
    labelled_grid(rows, labels, title, out_png)


def write_comparison(metrics: list[dict[str, Any]], samples: list[str | Path], shards: str | Path, dataset: str,
                     out_csv: str | Path, out_md: str | Path, out_png: str | Path, n: int = 8) -> None:
    header, rows = comparison_rows(metrics)
    source = metrics[0]["model"]["backbone"]
    atomic_write_text(out_csv, csv_text(header, rows))
    atomic_write_text(out_md, comparison_markdown(header, rows, source, dataset))
    stores = {METHODS[rowstore.open_complete(p).attrs["model"]["variant"]]: p for p in samples}
    order = [label for label in (METHODS["inverse"], METHODS["unpooled"], METHODS["pooled"]) if label in stores]
    _grid({label: stores[label] for label in order}, shards, metrics[0]["split"], n, out_png,
          f"{source}: original, deterministic inverse, FeatInv")


def layer_rows(metrics: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """One row per layer of one backbone's unpooled models: cosine-sim and top5(1) match on its own
    layer and on the backbone's last map, with the chance and mismatched baselines of its own layer."""
    names = {split_source(m["model"]["backbone"])[0] for m in metrics}
    if len(names) != 1:
        raise ValueError(f"a layer study is of one backbone, got {sorted(names)}")
    name = names.pop()
    header = ["backbone", "layer", "fmap_shape", "cosine_sim", "cosine_sim_ci_low", "cosine_sim_ci_high",
              "cosine_sim_mismatched", "cosine_sim_unrelated", "top5_match", "top1_match", "cosine_sim_on_last",
              "top5_match_on_last", "n_images"]
    rows = []
    for m in sorted(metrics, key=lambda m: split_source(m["model"]["backbone"])[1] != LAST):
        source = m["model"]["backbone"]
        layer = split_source(source)[1]
        if name not in m.get("cosine_sim_by", {}) or name not in m["match"]:
            raise ValueError(f"{source}'s reconstructions were not scored on {name}'s last map")
        rows.append([name, layer, "x".join(str(d) for d in m["model"]["fmap_shape"]), *_interval(m["cosine_sim"]),
                     _mean(m["cosine_sim_mismatched"]), m["cosine_sim_unrelated"], _mean(m["match"][source]["top5"]),
                     _mean(m["match"][source]["top1"]), _mean(m["cosine_sim_by"][name]),
                     _mean(m["match"][name]["top5"]), m["n_images"]])
    return header, rows


def write_layer_study(metrics: list[dict[str, Any]], samples: list[str | Path], shards: str | Path,
                      out_csv: str | Path, out_png: str | Path, n: int = 8) -> None:
    header, rows = layer_rows(metrics)
    atomic_write_text(out_csv, csv_text(header, rows))
    stores = {}
    for path in samples:
        model = rowstore.open_complete(path).attrs["model"]
        stores[split_source(model["backbone"])[1]] = path
    row = {r[1]: r for r in rows}
    labelled = {f"{layer} {row[layer][2]}\ncos {row[layer][3]:.3f} / on last {row[layer][10]:.3f}": stores[layer]
                for layer in sorted(stores, key=lambda layer: layer != LAST)}
    _grid(labelled, shards, metrics[0]["split"], n, out_png, f"{rows[0][0]}: FeatInv from the last map and from a "
          "shallower one")
