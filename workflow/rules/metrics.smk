# Evaluation: metrics per trained model (cosine-sim, top-k match, FID) -> Table 1, Table 2, metrics.json;
# loss curves for the report.


def evaluators(wildcards):
    """The conditioning backbone first; for the cross-model variant also every other backbone (Table 2)."""
    others = [b for b in BACKBONES if b != wildcards.backbone]
    return [wildcards.backbone] + (others if wildcards.variant == CROSS_VARIANT else [])


def train_store_input(wildcards):
    """The conditioning backbone's train feature store, for Table 1's nearest-train oracle."""
    if not config["metrics"]["oracles"]["nearest_train"]:
        return []
    return [expand(STORE, backbone=wildcards.backbone, split="train")[0]]


def train_store_arg(wildcards, input):
    return f"--train-store {input.train_store}" if input.train_store else ""


rule evaluate:
    message:
        "Scoring {wildcards.backbone} ({wildcards.variant}) reconstructions of {wildcards.split}"
    input:
        samples=SAMPLES,
        stores=lambda wildcards: expand(STORE, backbone=evaluators(wildcards), split=wildcards.split),
        shards=rules.build_shards.output.shards,
        train_store=train_store_input,
    output:
        metrics=METRICS,
        per_image=PER_IMAGE,
    params:
        stamp=stamp("evaluate"),
        code=rule_code_hash("evaluate"),
        cfg=verb_config("evaluate"),
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
    params:
        stamp=stamp("tables"),
        code=rule_code_hash("tables"),
        cfg=verb_config("tables"),
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
        stamp=stamp("plot_losses"),
        code=rule_code_hash("plot_losses"),
    log:
        f"results/logs/plot_losses/{DATASET}.log",
    benchmark:
        f"results/benchmarks/plot_losses/{DATASET}.tsv"
    threads: 1
    resources:
        **job_resources("plot_losses"),
    shell:
        "featinv --stamp {params.stamp:q} plot-losses --csv {input} --out {output.png} > {log} 2>&1"
