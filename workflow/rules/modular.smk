# Modular feature inversion (second paper): per-stage inverses vs classic full-path inverses, trained
# once (train_modular), then one rule per analysis, each writing a table and a figure.

MODULAR_MODEL = f"data/models/{DATASET}/modular/{MODULAR_RUN}"
MODULAR_INVERSES = f"{MODULAR_MODEL}/inverses.safetensors"
# The detection-error analysis is DETR's, removing self-attention a ViT's; a classifier's colour
# table gives accuracy, DETR's box AP.
MODULAR_FAMILY = forward_family(config["modular"]["backbone"])
MODULAR_ANALYSES = {  # rule / featinv verb -> outputs (the first is the rule's table)
    "modular_mse": ["mse_by_stage.csv", "params.csv", "reconstructions.png"],
    "modular_prediction": ["prediction_mse.csv", "prediction.png"],
    "modular_colour": ["colour_pairwise_mse.csv", "colour_ap.csv" if MODULAR_FAMILY == "detr" else "colour_accuracy.csv",
                       "colour.png", "colour_plot.png"],
    "modular_noise": ["token_noise.csv", "token_noise.png"],
    "modular_layers": ["layers_mse.csv", "layers.png"],
    "modular_finetune": ["finetune.csv", "finetune.png", "finetune_plot.png"],
}
if MODULAR_FAMILY == "detr":
    MODULAR_ANALYSES["modular_detection"] = ["detection.csv", "detection.png"]
if MODULAR_FAMILY == "vit":
    MODULAR_ANALYSES["modular_attention"] = ["attention.csv", "attention.png"]


def modular_targets():
    return [f"{MODULAR}/{outputs[0]}" for outputs in MODULAR_ANALYSES.values()]


rule modular:
    """Every modular analysis table (and with it every figure)."""
    input:
        modular_targets(),


rule train_modular:
    message:
        "Modular and classic inverses of every stage of {params.backbone}"
    input:
        shards=rules.build_shards.output.shards,
    output:
        inverses=MODULAR_INVERSES,
        meta=f"{MODULAR_MODEL}/meta.json",
        representations=directory(f"{MODULAR_MODEL}/train-representations.zarr"),
        loss=f"{MODULAR}/training-loss.csv",
    params:
        **verb_params("train_modular"),
        backbone=config["modular"]["backbone"],
    log:
        f"results/logs/train_modular/{DATASET}/{MODULAR_RUN}.log",
    benchmark:
        f"results/benchmarks/train_modular/{DATASET}/{MODULAR_RUN}.tsv"
    threads: 2
    resources:
        **job_resources("train_modular", gpu="one"),
    shell:
        "featinv --stamp {params.stamp:q} --threads {threads} train-modular --shards {input.shards} --model-dir {MODULAR_MODEL}"
        " --loss-csv {output.loss} --config {params.cfg:q} > {log} 2>&1"


for _name, _outputs in MODULAR_ANALYSES.items():

    rule:
        name:
            _name
        message:
            "{params.verb} of {params.backbone}"
        input:
            shards=rules.build_shards.output.shards,
            inverses=MODULAR_INVERSES,
            meta=f"{MODULAR_MODEL}/meta.json",
        output:
            [report(f"{MODULAR}/{out}", caption=f"../report/{_name}.rst", category="Modular inversion")
             if out.endswith(".png") or out == _outputs[0] else f"{MODULAR}/{out}" for out in _outputs],
        params:
            **verb_params(_name),
            verb=VERBS[_name].command,  # directives are evaluated here; shell/message later, so no loop variables there
            backbone=config["modular"]["backbone"],
        log:
            f"results/logs/{_name}/{DATASET}/{MODULAR_RUN}.log",
        benchmark:
            f"results/benchmarks/{_name}/{DATASET}/{MODULAR_RUN}.tsv"
        threads: 2
        resources:
            **job_resources(_name, gpu="one"),
        shell:
            "featinv --stamp {params.stamp:q} --threads {threads} {params.verb} --shards {input.shards}"
            " --model-dir {MODULAR_MODEL} --out-dir {MODULAR} --config {params.cfg:q} > {log} 2>&1"
