# What the first paper uses FeatInv for (sections 4.1-4.3): concept steering, feature interpolation,
# spatial composition, and the qualitative comparison of every trained model. All figures use the
# unpooled model of `applications.backbone` on the sampling split.

FIGURES = f"results/figures/{DATASET}"
APP_BACKBONE = config["applications"]["backbone"]
APP_MODEL = CONTROLNET.format(backbone=APP_BACKBONE, variant="unpooled")
APP_STORE = STORE.format(backbone=APP_BACKBONE, split=SAMPLING_SPLIT)
APP_TRAIN_STORE = STORE.format(backbone=APP_BACKBONE, split="train")
APP_FIGURES = {  # rule (= featinv verb) -> outputs
    "concepts_figure": ["concepts.png", "concepts.csv"],
    "interpolation_figure": ["interpolation.png", "interpolation.csv"],
    "composition_figure": ["composition.png", "composition.csv"],
}


def application_figures():
    return [f"{FIGURES}/{outs[0]}" for outs in APP_FIGURES.values()] + [f"{FIGURES}/qualitative.png"]


rule figures:
    """Every application figure."""
    input:
        application_figures(),


for _rule, _outs in APP_FIGURES.items():

    rule:
        name:
            _rule
        message:
            "{params.verb} with the unpooled {params.backbone} model"
        input:
            base=base_input,
            model=APP_MODEL,
            store=APP_STORE,
            train_store=[APP_TRAIN_STORE] if _rule == "concepts_figure" else [],
            shards=rules.build_shards.output.shards,
        output:
            png=report(f"{FIGURES}/{_outs[0]}", caption=f"../report/{_rule}.rst", category="Applications"),
            csv=f"{FIGURES}/{_outs[1]}",
        params:
            **verb_params(_rule),
            verb=VERBS[_rule].command,  # directives are evaluated here; shell/message later, so no loop variables there
            backbone=APP_BACKBONE,
            base=BASE,
            train=f"--train-store {APP_TRAIN_STORE}" if _rule == "concepts_figure" else "",
        log:
            f"results/logs/{_rule}/{DATASET}.log",
        benchmark:
            f"results/benchmarks/{_rule}/{DATASET}.tsv"
        threads: 2
        resources:
            **job_resources(_rule, gpu="one"),
        shell:
            "featinv --stamp {params.stamp:q} --threads {threads} {params.verb} --base {params.base:q} --model {input.model}"
            " --store {input.store} --shards {input.shards} --split {SAMPLING_SPLIT} --out-png {output.png}"
            " --out-csv {output.csv} {params.train} --config {params.cfg:q} > {log} 2>&1"


def _models():
    return [f"{b}-{v}" for b in SOURCES for v in VARIANTS]


rule qualitative_figure:
    message:
        "Every trained model's reconstructions side by side; samples per map"
    input:
        base=base_input,
        model=APP_MODEL,
        store=APP_STORE,
        shards=rules.build_shards.output.shards,
        samples=sample_stores(),
        per_image=expand(PER_IMAGE, backbone=SOURCES, variant=VARIANTS, split=SAMPLING_SPLIT),
    output:
        png=report(f"{FIGURES}/qualitative.png", caption="../report/qualitative_figure.rst", category="Applications"),
        csv=f"{FIGURES}/qualitative.csv",
        variability=report(f"{FIGURES}/variability.png", caption="../report/variability.rst", category="Applications"),
        variability_csv=f"{FIGURES}/variability.csv",
    params:
        **verb_params("qualitative_figure"),
        base=BASE,
        samples=lambda wildcards, input: " ".join(f"{m}={p}" for m, p in zip(_models(), input.samples)),
        per_image=lambda wildcards, input: " ".join(f"{m}={p}" for m, p in zip(_models(), input.per_image)),
    log:
        f"results/logs/qualitative_figure/{DATASET}.log",
    benchmark:
        f"results/benchmarks/qualitative_figure/{DATASET}.tsv"
    threads: 2
    resources:
        **job_resources("qualitative_figure", gpu="one"),
    shell:
        "featinv --stamp {params.stamp:q} --threads {threads} qualitative-figure --base {params.base:q} --model {input.model}"
        " --store {input.store} --shards {input.shards} --split {SAMPLING_SPLIT} --out-png {output.png}"
        " --out-csv {output.csv} --samples {params.samples} --per-image {params.per_image}"
        " --variability-png {output.variability} --variability-csv {output.variability_csv}"
        " --config {params.cfg:q} > {log} 2>&1"
