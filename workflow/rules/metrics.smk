# Evaluation: metrics per trained model (cosine-sim, top-k match, FID) -> Table 1, Table 2, metrics.json.


def evaluators(wildcards):
    """The conditioning backbone first; for the cross-model variant also every other backbone (Table 2)."""
    others = [b for b in BACKBONES if b != wildcards.backbone]
    return [wildcards.backbone] + (others if wildcards.variant == CROSS_VARIANT else [])


rule evaluate:
    message:
        "Scoring {wildcards.backbone} ({wildcards.variant}) reconstructions of {wildcards.split}"
    input:
        samples=SAMPLES,
        stores=lambda wildcards: expand(STORE, backbone=evaluators(wildcards), split=wildcards.split),
        shards=rules.build_shards.output.shards,
    output:
        metrics=METRICS,
        per_image=PER_IMAGE,
    params:
        cfg=section_json("metrics", "backbones"),
    log:
        f"results/logs/evaluate/{DATASET}-{{backbone}}-{{variant}}-{{split}}.log",
    benchmark:
        f"results/benchmarks/evaluate/{DATASET}-{{backbone}}-{{variant}}-{{split}}.tsv"
    threads: 1
    shell:
        "featinv --threads {threads} evaluate --samples {input.samples} --stores {input.stores}"
        " --shards {input.shards} --out {output.metrics} --per-image {output.per_image}"
        " --config {params.cfg:q} > {log} 2>&1"


rule tables:
    message:
        "Assembling Table 1 and Table 2"
    input:
        metrics=metric_files(),
    output:
        table1=TABLE1,
        table1_md="results/table1.md",
        table2="results/table2.csv",
        table2_md="results/table2.md",
        summary="results/metrics.json",
    params:
        cfg=section_json("metrics", "data"),
    log:
        "results/logs/tables.log",
    threads: 1
    shell:
        "featinv tables --metrics {input.metrics} --out-dir results --metrics-json {output.summary}"
        " --config {params.cfg:q} > {log} 2>&1"
