# Modular feature inversion (second paper): per-stage inverses vs classic full-path inverses.


rule modular_mse:
    message:
        "Modular vs classic inversion of {params.backbone}: reconstruction MSE by stage"
    input:
        shards=ancient(rules.build_shards.output.shards),
    output:
        mse=report(f"{MODULAR}/mse_by_stage.csv", caption="../report/modular_mse.rst", category="Modular inversion"),
        params=f"{MODULAR}/params.csv",
        grid=report(f"{MODULAR}/reconstructions.png", caption="../report/modular_grid.rst",
                    category="Modular inversion"),
    params:
        backbone=config["modular"]["backbone"],
        cfg=section_json("modular", "backbones"),
    log:
        f"results/logs/modular_mse/{DATASET}.log",
    benchmark:
        f"results/benchmarks/modular_mse/{DATASET}.tsv"
    threads: 2
    shell:
        "featinv --threads {threads} modular-mse --shards {input.shards} --out-dir {MODULAR}"
        " --config {params.cfg:q} > {log} 2>&1"
