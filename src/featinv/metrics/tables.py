"""Table 1 (per model), Table 2 (cross-model) and the DVC metrics file, from the metric JSONs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featinv.sourceid import split_source
from featinv.features.store import VARIANTS
from featinv.fileio import atomic_write_text, csv_text, write_json
from featinv.metrics.stats import Bootstrap, summarise

MEASURES = ("cosine_sim", "top5_match", "top1_match")
ORACLES = ("oracle_copy", "oracle_nearest_train")
ORACLE_MEASURES = (("cosine_sim", "cosine_sim"), ("top5_match", "top5"))
# Baselines of the cosine-sim: against another image's original; paired unpooled - pooled per image.
EXTRA = ("cosine_sim_mismatched", "unpooled_minus_pooled_cosine_sim")


def _fid_column(metrics: list[dict[str, Any]]) -> str:
    """``fid[<features>, N=<n>]``: the extractor and the number of reconstructions, so nobody takes
    a backbone-feature FID for an Inception one."""
    names = {(m["fid"]["features"], m["fid"]["n_fake"]) for m in metrics}
    if len(names) != 1:
        raise ValueError(f"models were scored on different FID features or sizes: {sorted(names)}")
    features, n = names.pop()
    label = "inception pool3" if features == "inception" else f"{features} pooled"
    return f"fid[{label}, N={n}]"


def _scoring(metrics: list[dict[str, Any]]) -> str:
    """How every model's reconstructions reached the backbone (``metrics.scoring``): one choice per table."""
    choices = {m.get("scoring", "eval_transform") for m in metrics}
    if len(choices) != 1:
        raise ValueError(f"models were scored in different ways: {sorted(choices)}")
    return choices.pop()


def _measure(m: dict[str, Any], name: str) -> dict[str, float]:
    if name == "cosine_sim":
        return m["cosine_sim"]
    return m["match"][m["model"]["backbone"]][name.split("_")[0]]


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float


NAN = Interval(float("nan"), float("nan"), float("nan"))


def _interval(summary: dict[str, float] | None) -> Interval:
    return NAN if summary is None else Interval(summary["mean"], summary["ci_low"], summary["ci_high"])


def paired_difference(a: dict[str, Any], b: dict[str, Any], boot: Bootstrap) -> Interval:
    """Mean of a's per-image cosine-sim minus b's, over the images both scored (same keys: same
    images, same seeds), with a bootstrap interval over images: a paired interval."""
    if "cosine_sim_per_map" not in a or "cosine_sim_per_map" not in b:
        return NAN
    pa, pb = a["cosine_sim_per_map"], b["cosine_sim_per_map"]
    if pa["keys"] != pb["keys"]:
        raise ValueError(f"{a['model']['backbone']}: the unpooled and pooled models scored different images")
    diff = np.asarray(pa["values"], dtype=np.float64) - np.asarray(pb["values"], dtype=np.float64)
    return _interval(summarise(diff, **boot))


@dataclass(frozen=True)
class Table1Row:
    """One model's row of Table 1."""

    backbone: str
    variant: str
    measures: dict[str, Interval]  # MEASURES, in order
    fid: float
    n_images: int
    samples_per_map: int
    cosine_sim_unrelated: float
    oracles: dict[str, float]  # "<oracle>_<measure>" for ORACLES x ORACLE_MEASURES, NaN where not computed
    mismatched: Interval  # cosine-sim of each reconstruction against another image's original
    paired: Interval  # unpooled row: its cosine-sim minus the pooled model's, per image (NaN elsewhere)
    control_strength: float = float("nan")  # what the model was sampled at (tuned under sampling.tuning: auto)
    guidance_scale: float = float("nan")

    def cells(self) -> list[Any]:
        """The row's cells, in :attr:`Table1.header` order (without the table's ``scoring``)."""
        out: list[Any] = [*split_source(self.backbone), self.variant]
        for i in [*(self.measures[name] for name in MEASURES), self.mismatched, self.paired]:
            out += [i.mean, i.low, i.high]
        return out + [self.fid, self.n_images, self.samples_per_map, self.cosine_sim_unrelated, *self.oracles.values(),
                      self.control_strength, self.guidance_scale]


@dataclass(frozen=True)
class Table1:
    fid_column: str  # fid[<features>, N=<n>]
    level: int  # confidence level of the intervals, in percent
    scoring: str  # metrics.scoring: eval_transform or resize
    rows: list[Table1Row]

    @property
    def header(self) -> list[str]:
        header = ["backbone", "layer", "variant"]
        for name in [*MEASURES, *EXTRA]:
            header += [name, f"{name}_ci{self.level}_low", f"{name}_ci{self.level}_high"]
        header += [self.fid_column, "n_images", "samples_per_map", "cosine_sim_unrelated"]
        return header + oracle_columns() + ["control_strength", "guidance_scale", "scoring"]

    def csv_rows(self) -> list[list[Any]]:
        """The CSV body: each row's cells, then how it was scored."""
        return [r.cells() + [self.scoring] for r in self.rows]


def oracle_columns() -> list[str]:
    return [f"{o}_{name}" for o in ORACLES for name, _ in ORACLE_MEASURES]


def table1(metrics: list[dict[str, Any]], boot: Bootstrap | None = None) -> Table1:
    """One row per (backbone, layer, variant), unpooled models first as in the paper. ``boot``: the bootstrap
    settings (n_boot, level, seed) of the paired unpooled - pooled interval."""
    order = {v: i for i, v in enumerate(VARIANTS)}
    by_model = {(m["model"]["backbone"], m["model"]["variant"]): m for m in metrics}
    rows = []
    for m in sorted(metrics, key=lambda m: (order.get(m["model"]["variant"], 2), m["model"]["backbone"])):
        measures = {name: _interval(_measure(m, name)) for name in MEASURES}
        oracles = {f"{o}_{name}": _oracle_value(m, o, key) for o in ORACLES for name, key in ORACLE_MEASURES}
        backbone, variant = m["model"]["backbone"], m["model"]["variant"]
        pooled = by_model.get((backbone, "pooled"))
        paired = paired_difference(m, pooled, boot or {}) if variant == "unpooled" and pooled else NAN
        sampled = m.get("sampling", {})  # absent in metrics older than it: NaN
        rows.append(Table1Row(backbone, variant, measures, m["fid"]["value"], m["n_images"], m["samples_per_map"],
                              m["cosine_sim_unrelated"], oracles, _interval(m.get("cosine_sim_mismatched")), paired,
                              float(sampled.get("control_strength", "nan")), float(sampled.get("guidance_scale", "nan"))))
    return Table1(_fid_column(metrics), round(100 * metrics[0]["confidence"]), _scoring(metrics), rows)


def _oracle_value(m: dict[str, Any], oracle: str, key: str) -> float:
    """An oracle's mean (NaN where it was not computed: nearest-train off, or older metrics)."""
    value = m.get(oracle)
    return float("nan") if value is None else value[key]["mean"]


@dataclass(frozen=True)
class Table2:
    """Top-5 and top-1 match of each conditioning source's reconstructions (rows: backbone, @layer for an
    intermediate one) against each evaluating backbone's own prediction on the original (columns)."""

    evaluators: list[str]
    rows: dict[str, dict[str, dict[str, float]]]  # conditioning -> evaluator -> {"top5", "top1"}

    @property
    def header(self) -> list[str]:
        return ["conditioning"] + [f"{e}:{k}" for e in self.evaluators for k in ("top5", "top1")]

    def cells(self) -> list[list[Any]]:
        return [[c] + [by[e][k] for e in self.evaluators for k in ("top5", "top1")] for c, by in self.rows.items()]


def table2(metrics: list[dict[str, Any]], variant: str) -> Table2:
    """Rows: conditioning source (models of ``variant``); columns: evaluating backbones. A match is a
    prediction of the whole network on the image, whatever layer a source reads, so a row's own
    source answers for its backbone's column."""
    chosen = sorted((m for m in metrics if m["model"]["variant"] == variant), key=lambda m: m["model"]["backbone"])
    if not chosen:
        raise ValueError(f"no {variant} models to cross-evaluate")

    def by_backbone(m: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
        own = m["model"]["backbone"]
        out = {split_source(e)[0]: v for e, v in m["match"].items() if e == own}
        out.update({e: v for e, v in m["match"].items() if split_source(e)[1] == "last"})
        return out

    evaluators = sorted(by_backbone(chosen[0]))
    rows = {}
    for m in chosen:
        found = by_backbone(m)
        if sorted(found) != evaluators:
            raise ValueError(f"{m['model']['backbone']} was evaluated by {sorted(found)}, not {evaluators}")
        rows[m["model"]["backbone"]] = {e: {k: found[e][k]["mean"] for k in ("top5", "top1")} for e in evaluators}
    return Table2(evaluators, rows)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def table1_markdown(table: Table1, dataset: str) -> str:
    md_header = ["backbone", "layer", "variant", "cosine-sim", "top5 match", "top1 match", "mismatched cosine-sim",
                 "unpooled − pooled (paired)", table.fid_column, "N",
                 "chance cosine-sim", "copy: cosine-sim / top5", "nearest train: cosine-sim / top5"]
    body = []
    for r in table.rows:
        cells = [*split_source(r.backbone), r.variant]
        cells += ["—" if i.mean != i.mean else f"{i.mean:.3f} [{i.low:.3f}, {i.high:.3f}]"
                  for i in (*(r.measures[name] for name in MEASURES), r.mismatched, r.paired)]
        cells += [f"{r.fid:.1f}", str(r.n_images), f"{r.cosine_sim_unrelated:.3f}"]
        cells += [" / ".join(f"{r.oracles[f'{o}_{name}']:.3f}" for name, _ in ORACLE_MEASURES) for o in ORACLES]
        body.append(cells)
    scored = {"eval_transform": "each reconstruction through the backbone's eval transform (resize, centre crop)",
              "resize": "each whole reconstruction resized to the backbone's input size"}[table.scoring]
    return (f"# Table 1: reconstruction quality ({dataset}, scoring: {table.scoring})\n\nScored with {scored}. "
            f"Mean over evaluation images with "
            f"{table.level}% bootstrap intervals. layer: the map inverted (last: the last spatial map before "
            "pooling; else the timm module whose output it is); cosine-sim: feature cosine per "
            "spatial position with the conditioning backbone, on that layer; top5(1) match: the original's top-1 class among "
            "the reconstruction's top 5 (its top 1); FID: between reconstructions and originals on the named "
            "features; mismatched: each reconstruction's cosine-sim against another image's original (the "
            "pairing of chance: what a reconstruction scores without information about its own image); "
            "unpooled − pooled: per image, the unpooled model's cosine-sim minus the pooled one's (same images "
            "and seeds, a paired interval); chance: cosine-sim between unrelated originals (another image of the split); copy: the "
            "original itself through the same scoring path (the ceiling at this resolution); nearest train: for "
            "each original, the training image whose map is closest (what recalling the training set reaches; "
            "nan where not computed).\n\n" + _md_table(md_header, body))


def table2_markdown(table: Table2, dataset: str, variant: str) -> str:
    body = [[c] + [f"{by[e]['top5']:.3f} / {by[e]['top1']:.3f}" for e in table.evaluators]
            for c, by in table.rows.items()]
    return (f"# Table 2: cross-model evaluation ({dataset}, {variant} models)\n\nRows: backbone whose features "
            "were inverted; columns: backbone evaluating the reconstructions; cells: top5 / top1 match against "
            "the evaluating backbone's prediction on the original.\n\n"
            + _md_table(["conditioning \\ evaluating"] + table.evaluators, body))


def write_tables(metrics: list[dict[str, Any]], out_dir: str | Path, dataset: str, cross_variant: str,
                 metrics_json: str | Path, boot: Bootstrap | None = None) -> None:
    """results/table1.{csv,md}, results/table2.{csv,md} and the metrics file DVC reads."""
    out_dir = Path(out_dir)
    t1, t2 = table1(metrics, boot), table2(metrics, cross_variant)
    atomic_write_text(out_dir / "table1.csv", csv_text(t1.header, t1.csv_rows()))
    atomic_write_text(out_dir / "table1.md", table1_markdown(t1, dataset))
    atomic_write_text(out_dir / "table2.csv", csv_text(t2.header, t2.cells()))
    atomic_write_text(out_dir / "table2.md", table2_markdown(t2, dataset, cross_variant))
    summary = {"table1": {f"{r.backbone}/{r.variant}": {
                   "cosine_sim": r.measures["cosine_sim"].mean, "top5_match": r.measures["top5_match"].mean,
                   "top1_match": r.measures["top1_match"].mean, "fid": r.fid,
                   "cosine_sim_unrelated": r.cosine_sim_unrelated,
                   **{k: v for k, v in r.oracles.items() if v == v},
                   **{name: {"mean": i.mean, "ci_low": i.low, "ci_high": i.high}
                      for name, i in zip(EXTRA, (r.mismatched, r.paired)) if i.mean == i.mean}} for r in t1.rows},
               "table2": {c: {f"{e}:{k}": by[e][k] for e in t2.evaluators for k in ("top5", "top1")}
                          for c, by in t2.rows.items()}}
    write_json(metrics_json, summary)
