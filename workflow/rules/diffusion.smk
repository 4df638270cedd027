# FeatInv: targets cache -> (embedded) base model -> ControlNet per (backbone, variant) -> samples.


rule encode_targets:
    message:
        "Caching diffusion targets of {wildcards.split}"
    input:
        shards=rules.build_shards.output.shards,
        codec=codec_input,
    output:
        targets=directory(TARGETS),
    params:
        **verb_params("encode_targets"),
    log:
        f"results/logs/encode_targets/{DATASET}-{{split}}.log",
    benchmark:
        f"results/benchmarks/encode_targets/{DATASET}-{{split}}.tsv"
    threads: 2
    resources:
        **job_resources("encode_targets", gpu="one"),
    shell:
        "featinv --stamp {params.stamp:q} --threads {threads} encode-targets --shards {input.shards} --split {wildcards.split}"
        " --out {output.targets} --config {params.cfg:q} > {log} 2>&1"


rule train_base:
    message:
        "Training the embedded base diffusion model on the train split"
    input:
        targets=expand(TARGETS, split="train"),
    output:
        model=directory(TRAINED_BASE),
        loss=f"results/training/{DATASET}/base-loss.csv",
    params:
        **verb_params("train_base"),
    log:
        f"results/logs/train_base/{DATASET}.log",
    benchmark:
        f"results/benchmarks/train_base/{DATASET}.tsv"
    threads: 2
    resources:
        **job_resources("train_base", gpu="all"),
    shell:
        "featinv --stamp {params.stamp:q} --threads {threads} --processes {resources.gpu} train-base"
        " --targets {input.targets} --out {output.model}"
        " --loss-csv {output.loss} --config {params.cfg:q} > {log} 2>&1"


rule preview_base:
    message:
        "Sampling the base model for a preview grid"
    input:
        base=base_input,
        targets=expand(TARGETS, split="train"),
    output:
        grid=report(f"results/base/{DATASET}/samples.png", caption="../report/base.rst", category="Base model"),
    params:
        **verb_params("preview_base"),
        base=BASE,
    log:
        f"results/logs/preview_base/{DATASET}.log",
    benchmark:
        f"results/benchmarks/preview_base/{DATASET}.tsv"
    threads: 2
    resources:
        **job_resources("preview_base", gpu="one"),
    shell:
        "featinv --stamp {params.stamp:q} --threads {threads} preview-base --base {params.base:q} --targets {input.targets}"
        " --out {output.grid} --config {params.cfg:q} > {log} 2>&1"


ONLINE_VIEWS = config["controlnet"]["train"]["augment"]["mode"] == "online"


def training_data(wildcards):
    """What a ControlNet trains on: the train split's cached maps and targets, or (augment online) its
    shards, from which every step draws its views."""
    if ONLINE_VIEWS:
        return {"shards": rules.build_shards.output.shards}
    return {"features": STORE.format(backbone=wildcards.backbone, split="train"),
            "targets": TARGETS.format(split="train")}


rule train_controlnet:
    wildcard_constraints:
        variant=r"unpooled|pooled",
    message:
        "Training the FeatInv ControlNet for {wildcards.backbone} ({wildcards.variant})"
    input:
        unpack(training_data),
        base=base_input,
    output:
        model=directory(CONTROLNET),
        loss=f"results/training/{DATASET}/{{backbone}}-{{variant}}-loss.csv",
    params:
        **verb_params("train_controlnet"),
        base=BASE,
        data=lambda wildcards, input: (f"--shards {input.shards} --backbone {wildcards.backbone}" if ONLINE_VIEWS
                                       else f"--features {input.features} --targets {input.targets}"),
    log:
        f"results/logs/train_controlnet/{DATASET}-{{backbone}}-{{variant}}.log",
    benchmark:
        f"results/benchmarks/train_controlnet/{DATASET}-{{backbone}}-{{variant}}.tsv"
    threads: 1
    resources:
        **job_resources("train_controlnet", gpu="all"),
    shell:
        "featinv --stamp {params.stamp:q} --threads {threads} --processes {resources.gpu} train-controlnet"
        " --base {params.base:q} {params.data} --variant {wildcards.variant} --out {output.model}"
        " --loss-csv {output.loss} --config {params.cfg:q} > {log} 2>&1"


rule tune_sampling:
    message:
        "Tuning control strength and guidance scale of {wildcards.backbone} ({wildcards.variant})"
    input:
        base=base_input,
        model=CONTROLNET,
        features=STORE.replace("{split}", SAMPLING_SPLIT),
    output:
        table=TUNING,
        figure=report(TUNING.replace(".csv", ".png"), caption="../report/tuning.rst", category="Sampling tuning"),
        chosen=TUNING.replace(".csv", ".json"),
    params:
        **verb_params("tune_sampling"),
        base=BASE,
    log:
        f"results/logs/tune_sampling/{DATASET}-{{backbone}}-{{variant}}.log",
    benchmark:
        f"results/benchmarks/tune_sampling/{DATASET}-{{backbone}}-{{variant}}.tsv"
    threads: 1
    resources:
        **job_resources("tune_sampling", gpu="one"),
    shell:
        "featinv --stamp {params.stamp:q} --threads {threads} tune-sampling --model {input.model} --base {params.base:q}"
        " --features {input.features} --out-csv {output.table} --out-png {output.figure}"
        " --out-json {output.chosen} --config {params.cfg:q} > {log} 2>&1"


rule tuning:
    """Every model's sampling tuning (table, heat map, choice), whatever sampling.tuning says."""
    input:
        expand(TUNING, backbone=SOURCES, variant=VARIANTS),


def tuned_input(wildcards):
    """Under sampling.tuning: auto, the model's tune_sampling choice; else nothing."""
    if config["sampling"]["tuning"] != "auto":
        return []
    return [expand(rules.tune_sampling.output.chosen, backbone=wildcards.backbone, variant=wildcards.variant)[0]]


rule sample:
    wildcard_constraints:
        variant=r"unpooled|pooled",
    message:
        "Reconstructing {wildcards.split} feature maps of {wildcards.backbone} ({wildcards.variant})"
    input:
        base=base_input,
        model=CONTROLNET,
        features=STORE,
        tuned=tuned_input,
    output:
        samples=directory(SAMPLES),
    params:
        **verb_params("sample"),
        base=BASE,
        tuned=lambda wildcards, input: f"--tuned {input.tuned}" if input.tuned else "",
    log:
        f"results/logs/sample/{DATASET}-{{backbone}}-{{variant}}-{{split}}.log",
    benchmark:
        f"results/benchmarks/sample/{DATASET}-{{backbone}}-{{variant}}-{{split}}.tsv"
    threads: 1
    resources:
        **job_resources("sample", gpu="all"),
    shell:
        "featinv --stamp {params.stamp:q} --threads {threads} --processes {resources.gpu} sample"
        " --model {input.model} --base {params.base:q}"
        " --features {input.features} --out {output.samples} {params.tuned} --config {params.cfg:q} > {log} 2>&1"


rule preview_samples:
    message:
        "Preview grid of {wildcards.backbone} ({wildcards.variant}) reconstructions"
    input:
        samples=SAMPLES,
        shards=rules.build_shards.output.shards,
    output:
        grid=report(f"results/samples/{DATASET}/{{backbone}}-{{variant}}-{{split}}.png",
                    caption="../report/samples.rst", category="Reconstructions"),
    params:
        **verb_params("preview_samples"),
        n=config["sampling"]["preview"],
    log:
        f"results/logs/preview_samples/{DATASET}-{{backbone}}-{{variant}}-{{split}}.log",
    benchmark:
        f"results/benchmarks/preview_samples/{DATASET}-{{backbone}}-{{variant}}-{{split}}.tsv"
    threads: 1
    resources:
        **job_resources("preview_samples"),
    shell:
        "featinv --stamp {params.stamp:q} preview-samples --samples {input.samples} --shards {input.shards} --split {wildcards.split}"
        " --n {params.n} --out {output.grid} > {log} 2>&1"
