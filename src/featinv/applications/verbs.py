"""Verbs of the applications: each writes one figure (PNG) and its numbers (CSV)."""

from __future__ import annotations

from pathlib import Path

from featinv.verbs import Arg, verb

SECTIONS = ("diffusion", "sampling", "applications", "backbones")
FIGURE_ARGS = (
    Arg("--base", "base model directory or hub id", required=True),
    Arg("--model", "the unpooled FeatInv ControlNet that reconstructs", required=True),
    Arg("--store", "feature store of the split the maps come from", required=True),
    Arg("--shards", required=True),
    Arg("--split", required=True),
    Arg("--out-png", required=True),
    Arg("--out-csv", required=True))


def _setup(args, cfg, scorer: bool = True):
    """The FeatInv generator of ``args.model`` and, with ``scorer``, its backbone's map scorer."""
    from featinv.applications.figures import FeatInvGenerator, MapScorer

    gen = FeatInvGenerator(args.base, args.model, cfg.diffusion, cfg.sampling)
    name = gen.net.meta["backbone"]
    score = MapScorer(args.store, cfg.backbones.weights.get(name), gen.pipe.device) if scorer else None
    return gen, score


@verb("FeatInv-Viz: MCD concepts of one class steered in input space (Fig 4)", sections=SECTIONS, args=(
    *FIGURE_ARGS, Arg("--train-store", "feature store the concepts are discovered in", required=True)))
def concepts_figure(args, cfg) -> None:
    from featinv.applications.figures import concepts_figure as figure

    gen, _ = _setup(args, cfg, scorer=False)
    figure(gen, args.train_store, args.store, args.shards, args.split, cfg.applications.concepts,
           args.out_png, args.out_csv)
    print(Path(args.out_csv).read_text())


def _map_figure(args, cfg, figure, section) -> None:
    """A figure of reconstructed (combined) feature maps of the store, scored on the backbone."""
    gen, score = _setup(args, cfg)
    figure(gen, score, args.store, args.shards, args.split, section, args.out_png, args.out_csv)
    print(Path(args.out_csv).read_text())


@verb("reconstructions of interpolated feature maps (Fig 5)", sections=SECTIONS, args=FIGURE_ARGS)
def interpolation_figure(args, cfg) -> None:
    from featinv.applications.figures import interpolation_figure as figure

    _map_figure(args, cfg, figure, cfg.applications.interpolation)


@verb("reconstructions of spatially composed feature maps (Fig 6)", sections=SECTIONS, args=FIGURE_ARGS)
def composition_figure(args, cfg) -> None:
    from featinv.applications.figures import composition_figure as figure

    _map_figure(args, cfg, figure, cfg.applications.composition)


@verb("every trained model's reconstructions side by side, and samples per map (Fig 3)", sections=SECTIONS, args=(
    *FIGURE_ARGS,
    Arg("--samples", "MODEL=sample store, one per trained model", required=True, nargs="+"),
    Arg("--per-image", "MODEL=per-image metrics CSV", required=True, nargs="+"),
    Arg("--variability-png", required=True),
    Arg("--variability-csv", required=True)))
def qualitative_figure(args, cfg) -> None:
    from featinv.applications.figures import qualitative_figure as figure
    from featinv.applications.figures import variability_figure
    from featinv.provenance import check_or_warn

    gen, score = _setup(args, cfg)
    q = cfg.applications.qualitative
    stores = dict(item.split("=", 1) for item in args.samples)
    per_image = dict(item.split("=", 1) for item in args.per_image)
    check_or_warn([*per_image.values(), *stores.values()], target=args.out_png)
    figure(stores, per_image, args.shards, args.split, q, args.out_png, args.out_csv)
    variability_figure(gen, score, args.store, args.shards, args.split, q, args.variability_png, args.variability_csv)
    print(Path(args.out_csv).read_text())
