# Shards -> zarr feature store per (dataset, backbone, split) + accuracy/throughput report.


def weights_arg(wildcards):
    """`--weights FILE` where params name a local weights file for this backbone, else nothing."""
    path = config["backbones"]["weights"].get(wildcards.backbone)
    return f"--weights {shlex.quote(path)}" if path else ""


rule extract_features:
    message:
        f"Extracting {{wildcards.backbone}} feature maps of {DATASET}/{{wildcards.split}}"
    input:
        shards=rules.build_shards.output.shards,
    output:
        store=directory("data/features/" + DATASET + "/{backbone}/{split}.zarr"),
        report="results/backbones/" + DATASET + "/{backbone}-{split}.json",
    params:
        weights=weights_arg,
        cfg=section_json("features"),
    log:
        "results/logs/extract_features/" + DATASET + "-{backbone}-{split}.log",
    benchmark:
        "results/benchmarks/extract_features/" + DATASET + "-{backbone}-{split}.tsv"
    threads: 2
    shell:
        "featinv --threads {threads} extract --backbone {wildcards.backbone} {params.weights}"
        " --shards {input.shards} --split {wildcards.split} --store {output.store}"
        " --report {output.report} --config {params.cfg:q} > {log} 2>&1"
