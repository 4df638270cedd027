# featinv: map a vision model's features back to images.
# Stages live in workflow/rules/; every rule calls one `featinv <verb>`.
# Embedded default: `snakemake --cores all`; paper scale: add `--configfile config/paper.yaml`.

configfile: "params.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/diffusion.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/applications.smk"
include: "workflow/rules/modular.smk"


onsuccess:
    record_in_dvc()


check_resource_rules({r.name for r in workflow.rules} | set(VERBS))  # a verb's rule may exist under other params only


rule all:
    default_target: True
    input:
        feature_stores(),
        backbone_reports(),
        base_previews(),
        sample_stores(),
        sample_previews(),
        TABLE1,
        rules.plot_losses.output.png,
        application_figures(),
        modular_targets(),
        comparisons(),
        layer_studies(),
