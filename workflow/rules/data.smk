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
    # images decoded on this many threads: locally at most --cores; a cluster job asks as many CPUs (8 at
    # most, and no more than the planning machine has: a SLURM node's partition refuses a larger ask)
    threads: min(8, os.cpu_count() or 1)
    resources:
        **job_resources("build_shards"),
    shell:
        "featinv --stamp {params.stamp:q} --threads {threads} build-shards --out {output.shards} --config {params.cfg:q} > {log} 2>&1"
