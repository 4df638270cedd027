# Evaluation: metrics per trained model (cosine-sim, top-k match, FID) -> Table 1, Table 2, metrics.json;
# loss curves for the report.


def evaluators(wildcards):
    """The conditioning source first, then every backbone's last map (its own too, for an intermediate
    layer): cosine-sim and top-k match on each (Table 2, the comparison's other-backbone columns)."""
    return [wildcards.backbone] + [b for b in BACKBONES if b != wildcards.backbone]


def train_store_input(wildcards):
    """The conditioning backbone's train feature store, for Table 1's nearest-train oracle."""
    if not config["metrics"]["oracles"]["nearest_train"]:
        return []
    return [expand(STORE, backbone=wildcards.backbone, split="train")[0]]


def train_store_arg(wildcards, input):
    return f"--train-store {input.train_store}" if input.train_store else ""


rule score_originals:
    message:
        "Scoring the originals of {wildcards.split} with {wildcards.backbone}, once for every model"
    input:
        store=STORE,
        shards=rules.build_shards.output.shards,
    output:
        scores=directory(ORIGINALS),
    params:
        **verb_params("score_originals"),
    log:
        f"results/logs/score_originals/{DATASET}-{{backbone}}-{{split}}.log",
    benchmark:
        f"results/benchmarks/score_originals/{DATASET}-{{backbone}}-{{split}}.tsv"
    threads: 1
    resources:
        **job_resources("score_originals", gpu="one"),
    shell:
        "featinv --stamp {params.stamp:q} --threads {threads} score-originals --store {input.store}"
        " --shards {input.shards} --out {output.scores} --config {params.cfg:q} > {log} 2>&1"


rule evaluate:
    message:
        "Scoring {wildcards.backbone} ({wildcards.variant}) reconstructions of {wildcards.split}"
    input:
        samples=SAMPLES,
        stores=lambda wildcards: expand(STORE, backbone=evaluators(wildcards), split=wildcards.split),
        originals=lambda wildcards: expand(ORIGINALS, backbone=evaluators(wildcards), split=wildcards.split),
        shards=rules.build_shards.output.shards,
        train_store=train_store_input,
    output:
        metrics=METRICS,
        per_image=PER_IMAGE,
    params:
        **verb_params("evaluate"),
        train_store=train_store_arg,
    log:
        f"results/logs/evaluate/{DATASET}-{{backbone}}-{{variant}}-{{split}}.log",
    benchmark:
        f"results/benchmarks/evaluate/{DATASET}-{{backbone}}-{{variant}}-{{split}}.tsv"
    threads: 1
    resources:
        **job_resources("evaluate", gpu="one"),
    shell:
        "featinv --stamp {params.stamp:q} --threads {threads} evaluate --samples {input.samples} --stores {input.stores}"
        " --originals {input.originals}"
        " --shards {input.shards} {params.train_store} --out {output.metrics} --per-image {output.per_image}"
        " --config {params.cfg:q} > {log} 2>&1"


rule tables:
    message:
        "Assembling Table 1 and Table 2"
    input:
        metrics=metric_files(),
    output:
        table1=report(TABLE1, caption="../report/table1.rst", category="Tables"),
        table1_md="results/table1.md",
        table2=report("results/table2.csv", caption="../report/table2.rst", category="Tables"),
        table2_md="results/table2.md",
        summary="results/metrics.json",
        provenance="results/tables.provenance.json",  # the job's stamp: metrics.json stays metrics alone (dvc metrics show)
    params:
        **verb_params("tables"),
    log:
        "results/logs/tables.log",
    benchmark:
        f"results/benchmarks/tables/{DATASET}.tsv"
    threads: 1
    resources:
        **job_resources("tables"),
    shell:
        "featinv --stamp {params.stamp:q} tables --metrics {input.metrics} --out-dir results --metrics-json {output.summary}"
        " --config {params.cfg:q} > {log} 2>&1"


rule plot_losses:
    message:
        "Plotting training losses"
    input:
        loss_csvs(),
    output:
        png=report(f"results/figures/{DATASET}/training-loss.png", caption="../report/losses.rst", category="Training"),
    params:
        **verb_params("plot_losses"),
    log:
        f"results/logs/plot_losses/{DATASET}.log",
    benchmark:
        f"results/benchmarks/plot_losses/{DATASET}.tsv"
    threads: 1
    resources:
        **job_resources("plot_losses"),
    shell:
        "featinv --stamp {params.stamp:q} plot-losses --csv {input} --out {output.png} > {log} 2>&1"


# FeatInv beside a deterministic inverse of the same map (results/comparison/), and the layer study
# (results/layers/): side-by-side reports from the metric JSONs and sample stores.
INVERSE = f"data/models/{DATASET}/inverse/{{backbone}}"
COMPARISON = f"results/comparison/{DATASET}/{{backbone}}"
LAYER_STUDY = f"results/layers/{DATASET}/{{backbone}}"
STUDY = config["layers"]


rule train_inverse:
    message:
        "Training the deterministic inverse of {wildcards.backbone}'s map"
    input:
        features=STORE.replace("{split}", "train"),
        targets=TARGETS.format(split="train"),
    output:
        model=directory(INVERSE),
        loss=f"results/training/{DATASET}/{{backbone}}-inverse-loss.csv",
    params:
        **verb_params("train_inverse"),
    log:
        f"results/logs/train_inverse/{DATASET}-{{backbone}}.log",
    benchmark:
        f"results/benchmarks/train_inverse/{DATASET}-{{backbone}}.tsv"
    threads: 1
    resources:
        **job_resources("train_inverse", gpu="all"),
    shell:
        "featinv --stamp {params.stamp:q} --threads {threads} --processes {resources.gpu} train-inverse"
        " --features {input.features} --targets {input.targets} --out {output.model} --loss-csv {output.loss}"
        " --config {params.cfg:q} > {log} 2>&1"


rule invert:
    message:
        "Reconstructing {wildcards.split} maps of {wildcards.backbone} with the deterministic inverse"
    input:
        model=INVERSE,
        features=STORE,
    output:
        samples=directory(SAMPLES.replace("{variant}", "inverse")),
    params:
        **verb_params("invert"),
    log:
        f"results/logs/invert/{DATASET}-{{backbone}}-{{split}}.log",
    benchmark:
        f"results/benchmarks/invert/{DATASET}-{{backbone}}-{{split}}.tsv"
    threads: 1
    resources:
        **job_resources("invert", gpu="one"),
    shell:
        "featinv --stamp {params.stamp:q} --threads {threads} invert --model {input.model} --features {input.features}"
        " --out {output.samples} --config {params.cfg:q} > {log} 2>&1"


def compared(wildcards, path):
    return expand(path, backbone=wildcards.backbone, variant=[*VARIANTS, "inverse"], split=SAMPLING_SPLIT)


rule compare:
    message:
        "FeatInv beside the deterministic inverse of {wildcards.backbone}'s map"
    input:
        metrics=lambda wildcards: compared(wildcards, METRICS),
        samples=lambda wildcards: compared(wildcards, SAMPLES),
        shards=rules.build_shards.output.shards,
    output:
        csv=report(COMPARISON + ".csv", caption="../report/comparison.rst", category="Comparison"),
        md=COMPARISON + ".md",
        png=report(COMPARISON + ".png", caption="../report/comparison.rst", category="Comparison"),
    params:
        **verb_params("compare"),
    log:
        f"results/logs/compare/{DATASET}-{{backbone}}.log",
    benchmark:
        f"results/benchmarks/compare/{DATASET}-{{backbone}}.tsv"
    threads: 1
    resources:
        **job_resources("compare"),
    shell:
        "featinv --stamp {params.stamp:q} compare --metrics {input.metrics} --samples {input.samples}"
        " --shards {input.shards} --out-csv {output.csv} --out-md {output.md} --out-png {output.png}"
        " --config {params.cfg:q} > {log} 2>&1"


def studied(wildcards, path):
    return expand(path, backbone=[wildcards.backbone, source_id(wildcards.backbone, STUDY["layer"])],
                  variant="unpooled", split=SAMPLING_SPLIT)


rule layer_study:
    message:
        "FeatInv of {wildcards.backbone} from its last map and from layer " + STUDY["layer"]
    input:
        metrics=lambda wildcards: studied(wildcards, METRICS),
        samples=lambda wildcards: studied(wildcards, SAMPLES),
        shards=rules.build_shards.output.shards,
    output:
        csv=report(LAYER_STUDY + ".csv", caption="../report/layer_study.rst", category="Layers"),
        png=report(LAYER_STUDY + ".png", caption="../report/layer_study.rst", category="Layers"),
    params:
        **verb_params("layer_study"),
    log:
        f"results/logs/layer_study/{DATASET}-{{backbone}}.log",
    benchmark:
        f"results/benchmarks/layer_study/{DATASET}-{{backbone}}.tsv"
    threads: 1
    resources:
        **job_resources("layer_study"),
    shell:
        "featinv --stamp {params.stamp:q} layer-study --metrics {input.metrics} --samples {input.samples}"
        " --shards {input.shards} --out-csv {output.csv} --out-png {output.png} --config {params.cfg:q} > {log} 2>&1"


def comparisons():
    return expand(rules.compare.output.csv, backbone=SOURCES)


def layer_studies():
    return expand(rules.layer_study.output.csv, backbone=STUDY["backbone"]) if STUDY["backbone"] else []


rule comparison:
    """FeatInv beside the deterministic inverse, for every source; the layer study."""
    input:
        comparisons(),
        layer_studies(),
