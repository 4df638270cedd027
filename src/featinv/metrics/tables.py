"""Table 1 (per model), Table 2 (cross-model) and the DVC metrics file, from the metric JSONs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from featinv.fileio import atomic_write_text, csv_text, write_json

MEASURES = ("cosine_sim", "top5_match", "top1_match")
ORACLES = ("oracle_copy", "oracle_nearest_train")
ORACLE_MEASURES = (("cosine_sim", "cosine_sim"), ("top5_match", "top5"))


def _fid_column(metrics: list[dict[str, Any]]) -> str:
    """``fid[<features>, N=<n>]``: the extractor and the number of reconstructions, so nobody takes
    a backbone-feature FID for an Inception one."""
    names = {(m["fid"]["features"], m["fid"]["n_fake"]) for m in metrics}
    if len(names) != 1:
        raise ValueError(f"models were scored on different FID features or sizes: {sorted(names)}")
    features, n = names.pop()
    label = "inception pool3" if features == "inception" else f"{features} pooled"
    return f"fid[{label}, N={n}]"


def _measure(m: dict[str, Any], name: str) -> dict[str, float]:
    if name == "cosine_sim":
        return m["cosine_sim"]
    return m["match"][m["model"]["backbone"]][name.split("_")[0]]


def table1(metrics: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows: one row per (backbone, variant), unpooled models first as in the paper."""
    fid_col = _fid_column(metrics)
    level = round(100 * metrics[0]["confidence"])
    header = ["backbone", "variant"]
    for name in MEASURES:
        header += [name, f"{name}_ci{level}_low", f"{name}_ci{level}_high"]
    header += [fid_col, "n_images", "samples_per_map", "cosine_sim_unrelated"]
    header += [f"{o}_{name}" for o in ORACLES for name, _ in ORACLE_MEASURES]
    order = {"unpooled": 0, "pooled": 1}
    rows = []
    for m in sorted(metrics, key=lambda m: (order.get(m["model"]["variant"], 2), m["model"]["backbone"])):
        row: list[Any] = [m["model"]["backbone"], m["model"]["variant"]]
        for name in MEASURES:
            s = _measure(m, name)
            row += [s["mean"], s["ci_low"], s["ci_high"]]
        row += [m["fid"]["value"], m["n_images"], m["samples_per_map"], m["cosine_sim_unrelated"]]
        row += [_oracle_value(m, o, key) for o in ORACLES for _, key in ORACLE_MEASURES]
        rows.append(row)
    return header, rows


def _oracle_value(m: dict[str, Any], oracle: str, key: str) -> float:
    """An oracle's mean (NaN where it was not computed: nearest-train off, or older metrics)."""
    value = m.get(oracle)
    return float("nan") if value is None else value[key]["mean"]


def table2(metrics: list[dict[str, Any]], variant: str) -> tuple[list[str], list[list[Any]]]:
    """Rows: conditioning backbone (models of ``variant``); columns: top-5 and top-1 match against each
    evaluating backbone's own prediction on the original."""
    chosen = sorted((m for m in metrics if m["model"]["variant"] == variant), key=lambda m: m["model"]["backbone"])
    if not chosen:
        raise ValueError(f"no {variant} models to cross-evaluate")
    evaluators = sorted(chosen[0]["match"])
    header = ["conditioning"] + [f"{e}:{k}" for e in evaluators for k in ("top5", "top1")]
    rows = []
    for m in chosen:
        if sorted(m["match"]) != evaluators:
            raise ValueError(f"{m['model']['backbone']} was evaluated by {sorted(m['match'])}, not {evaluators}")
        rows.append([m["model"]["backbone"]] + [m["match"][e][k]["mean"] for e in evaluators for k in ("top5", "top1")])
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table1_markdown(header: list[str], rows: list[list[Any]], dataset: str) -> str:
    fid_col = header[11]  # after backbone, variant and three (mean, low, high) triples
    md_header = ["backbone", "variant", "cosine-sim", "top5 match", "top1 match", fid_col, "N", "chance cosine-sim",
                 "copy: cosine-sim / top5", "nearest train: cosine-sim / top5"]
    body = []
    for r in rows:
        cells = [r[0], r[1]]
        for i in range(3):
            mean, lo, hi = r[2 + 3 * i: 5 + 3 * i]
            cells.append(f"{mean:.3f} [{lo:.3f}, {hi:.3f}]")
        cells += [f"{r[11]:.1f}", str(r[12]), f"{r[14]:.3f}"]
        cells += [f"{r[15 + 2 * i]:.3f} / {r[16 + 2 * i]:.3f}" for i in range(len(ORACLES))]
        body.append(cells)
    return (f"# Table 1: reconstruction quality ({dataset})\n\nMean over evaluation images with "
            f"{header[3].split('_ci')[1].split('_')[0]}% bootstrap intervals. cosine-sim: feature cosine per "
            "spatial position with the conditioning backbone; top5(1) match: the original's top-1 class among "
            "the reconstruction's top 5 (its top 1); FID: between reconstructions and originals on the named "
            "features; chance: cosine-sim between unrelated originals (another image of the split); copy: the "
            "original itself through the same scoring path (the ceiling at this resolution); nearest train: for "
            "each original, the training image whose map is closest (what recalling the training set reaches; "
            "nan where not computed).\n\n" + _md_table(md_header, body))


def table2_markdown(header: list[str], rows: list[list[Any]], dataset: str, variant: str) -> str:
    evaluators = [h.split(":")[0] for h in header[1::2]]
    body = [[r[0]] + [f"{r[1 + 2 * i]:.3f} / {r[2 + 2 * i]:.3f}" for i in range(len(evaluators))] for r in rows]
    return (f"# Table 2: cross-model evaluation ({dataset}, {variant} models)\n\nRows: backbone whose features "
            "were inverted; columns: backbone evaluating the reconstructions; cells: top5 / top1 match against "
            "the evaluating backbone's prediction on the original.\n\n"
            + _md_table(["conditioning \\ evaluating"] + evaluators, body))


def write_tables(metrics: list[dict[str, Any]], out_dir: str | Path, dataset: str, cross_variant: str,
                 metrics_json: str | Path) -> None:
    """results/table1.{csv,md}, results/table2.{csv,md} and the metrics file DVC reads."""
    out_dir = Path(out_dir)
    h1, r1 = table1(metrics)
    h2, r2 = table2(metrics, cross_variant)
    atomic_write_text(out_dir / "table1.csv", csv_text(h1, r1))
    atomic_write_text(out_dir / "table1.md", table1_markdown(h1, r1, dataset))
    atomic_write_text(out_dir / "table2.csv", csv_text(h2, r2))
    atomic_write_text(out_dir / "table2.md", table2_markdown(h2, r2, dataset, cross_variant))
    summary = {"table1": {f"{r[0]}/{r[1]}": {"cosine_sim": r[2], "top5_match": r[5], "top1_match": r[8],
                                             "fid": r[11], "cosine_sim_unrelated": r[14],
                                             **{h: v for h, v in zip(h1[15:], r[15:]) if v == v}} for r in r1},
               "table2": {r[0]: dict(zip(h2[1:], r[1:])) for r in r2}}
    write_json(metrics_json, summary)
