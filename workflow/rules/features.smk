# Shards -> zarr feature store per (dataset, backbone, split) + accuracy/throughput report.


rule extract_features:
    message:
        f"Extracting {{wildcards.backbone}} feature maps of {DATASET}/{{wildcards.split}}"
    input:
        shards=rules.build_shards.output.shards,
    output:
        store=directory(STORE),
        report=BACKBONE_REPORT,
    params:
        **verb_params("extract_features"),
        weights=weights_arg,
    log:
        f"results/logs/extract_features/{DATASET}-{{backbone}}-{{split}}.log",
    benchmark:
        f"results/benchmarks/extract_features/{DATASET}-{{backbone}}-{{split}}.tsv"
    threads: 2
    resources:
        **job_resources("extract_features", gpu="all"),
    shell:
        "featinv --stamp {params.stamp:q} --threads {threads} --processes {resources.gpu} extract-features"
        " --backbone {wildcards.backbone} {params.weights}"
        " --shards {input.shards} --split {wildcards.split} --store {output.store}"
        " --report {output.report} --config {params.cfg:q} > {log} 2>&1"
