# Dataset source -> webdataset tar shards + manifest (+ rejected.tsv).


rule build_shards:
    message:
        f"Building {DATASET} shards from source '{config['data']['source']}'"
    output:
        shards=directory(SHARDS),
    params:
        **verb_params("build_shards"),
    log:
        f"results/logs/build_shards/{DATASET}.log",
    benchmark:
        f"results/benchmarks/build_shards/{DATASET}.tsv"
    threads: 8  # images decoded on this many threads (Snakemake gives at most --cores)
    resources:
        **job_resources("build_shards"),
    shell:
        "featinv --stamp {params.stamp:q} --threads {threads} build-shards --out {output.shards} --config {params.cfg:q} > {log} 2>&1"
