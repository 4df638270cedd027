"""dvc.yaml is generated from the Snakemake DAG and the verb registry (featinv.dvcyaml); its code
dependencies are the source files each stage's verb imports (featinv.codedeps)."""

import subprocess
import sys
from pathlib import Path

import yaml

from featinv.cli import VERBS
from featinv.codedeps import rule_code, rule_code_hash, verb_modules
from featinv.config import execution_keys
from featinv.dvcyaml import Job, job_command, snakemake_jobs, stages

REPO = Path(__file__).resolve().parents[1]


def test_the_committed_dvc_yaml_is_the_generated_one():
    proc = subprocess.run([sys.executable, "-m", "featinv.dvcyaml", "--check"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_each_stage_has_its_rules_inputs_code_and_verb_sections():
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    code = rule_code()
    extract = doc["extract_features"]
    assert extract["matrix"] == {"backbone": ["tf_efficientnet_lite0", "tf_efficientnet_lite2"], "split": ["train", "val"]}
    # the layer study's source (lite0 at blocks.4) has stages of its own: DVC addresses matrix items as
    # stage@item, so a value with '@' stays out of every matrix, and stage names hold no '@' or '.'
    assert doc["extract_features_tf_efficientnet_lite0-blocks-4"]["matrix"] == {"split": ["train", "val"]}
    assert doc["extract_features_tf_efficientnet_lite0-blocks-4"]["outs"][0] == (
        "data/features/demo/tf_efficientnet_lite0@blocks.4/${item.split}.zarr")
    assert all("@" not in str(v) for stage in doc.values() for v in stage.get("matrix", {}).values())
    assert extract["deps"] == ["data/shards/demo", *code["extract_features"], "workflow/rules/features.smk"]
    # the verb's sections, their execution keys (workers, batch size, device, store layout) left out
    assert extract["params"] == ["features.splits", "features.topk", "features.view", "features.layer", "backbones"]
    # so no stage's params reach an execution key (dvc status ignores a change of one), and together
    # they still cover every other key of the sections their verbs read
    marked = {".".join(p) for p in execution_keys()}
    listed = {p for stage in doc.values() for p in stage.get("params", [])}
    assert not {(p, m) for p in listed for m in marked if m == p or m.startswith(p + ".")}
    assert {"controlnet.train.lr", "controlnet.encoder", "sampling.guidance_scale", "metrics.fid"} <= listed
    assert extract["outs"] == ["data/features/demo/${item.backbone}/${item.split}.zarr",
                               "results/backbones/demo/${item.backbone}-${item.split}.json"]
    assert doc["tables"]["metrics"] == ["results/metrics.json"] and "results/metrics.json" not in doc["tables"]["outs"]
    # the shipped base model: its weights and configs, not its card
    assert {"models/demo-base/unet", "models/demo-base/scheduler", "models/demo-base/codec.json"} <= set(
        doc["train_controlnet"]["deps"])
    assert not [d for d in doc["train_controlnet"]["deps"] if d.endswith(("README.md", ".png"))]
    # every model is scored on every backbone's store (Table 2, the comparison): a stage per source, its
    # models (unpooled, pooled, the deterministic inverse) the matrix; DVC's names: no '@' or '.'
    evaluate = doc["evaluate"]
    assert evaluate["matrix"] == {"backbone": ["tf_efficientnet_lite0", "tf_efficientnet_lite2"],
                                  "variant": ["inverse", "pooled", "unpooled"]}
    assert {"data/features/demo/tf_efficientnet_lite0/val.zarr", "data/features/demo/tf_efficientnet_lite2/val.zarr",
            "data/features/demo/${item.backbone}/train.zarr"} <= set(evaluate["deps"])
    assert "data/features/demo/tf_efficientnet_lite0/val.zarr" in doc["evaluate_tf_efficientnet_lite0-blocks-4"]["deps"]


def job(rule, inputs, outputs, **wildcards):
    return Job(rule, wildcards, tuple(inputs), tuple(outputs), (), "workflow/rules/x.smk")


def test_jobs_become_a_matrix_stage_that_expands_to_exactly_their_files():
    jobs = [job("r", [f"in/{b}.x", "shared"], [f"out/{b}-{v}.y"], b=b, v=v) for b in ("p", "q") for v in ("u", "w")]
    (name, stage), = stages(jobs, {"r": ["src/a.py"]}, {"r": ("sec",)}).items()
    assert name == "r" and stage["matrix"] == {"b": ["p", "q"], "v": ["u", "w"]}
    assert stage["deps"] == ["in/${item.b}.x", "shared", "src/a.py", "workflow/rules/x.smk"]
    assert stage["outs"] == ["out/${item.b}-${item.v}.y"] and stage["params"] == ["sec"]
    assert stage["cmd"] == "snakemake --cores all --allowed-rules r -- out/${item.b}-${item.v}.y"
    # a value inside a longer word is not a matrix value ("p" in "pp")
    (_, stage), = stages([job("r", [f"pp/{b}"], [f"o/{b}"], b=b) for b in ("p", "q")], {}, {}).items()
    assert stage["deps"] == ["pp/${item.b}", "workflow/rules/x.smk"] and "params" not in stage


def test_jobs_that_no_single_matrix_describes_are_split_by_a_wildcard():
    jobs = [job("r", [f"s/{b}"] + ([f"s/{o}" for o in ("p", "q")] if v == "u" else []), [f"o/{b}-{v}"], b=b, v=v)
            for b in ("p", "q") for v in ("u", "w")]
    out = stages(jobs, {}, {})
    assert sorted(out) == ["r_u", "r_w"]
    assert out["r_u"]["deps"] == ["s/p", "s/q", "workflow/rules/x.smk"] and out["r_u"]["outs"] == ["o/${item.b}-u"]
    assert out["r_w"]["deps"] == ["s/${item.b}", "workflow/rules/x.smk"]


def test_the_detr_overlay_has_detection_errors_and_no_attention_removal():
    out = subprocess.run([sys.executable, "-c", "import sys; from featinv.dvcyaml import dvc_yaml; "
                          "sys.stdout.write(dvc_yaml('.', ('config/paper-coco.yaml', 'config/paper-detr.yaml')))"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    doc = yaml.safe_load(out)["stages"]
    assert "modular_attention" not in doc and {"train_modular", "modular_mse", "modular_layers", "modular_detection",
                                               "modular_prediction", "modular_finetune"} <= set(doc)
    assert "results/modular/coco/detr-facebook-detr-resnet-50/colour_ap.csv" in doc["modular_colour"]["outs"]


def test_a_verb_depends_on_what_it_imports_and_not_on_other_verbs_code():
    tables = verb_modules("tables")
    assert {"featinv.cli", "featinv.metrics.tables", "featinv.fileio", "featinv.features.store", "featinv.rowstore"} <= tables
    assert not any(m.startswith(("featinv.diffusion", "featinv.modular", "featinv.backbones")) for m in tables)
    extract = verb_modules("extract_features")
    assert {"featinv.features.extract", "featinv.data.shards", "featinv.data.batches", "featinv.backbones.registry",
            "featinv.rowstore"} <= extract
    assert "featinv.diffusion.base" not in extract
    colour = verb_modules("modular_colour")
    assert {"featinv.modular.verbs", "featinv.modular.colour", "featinv.modular.trained"} <= colour
    assert "featinv.modular.finetune" not in colour  # a sibling verb's import, in the same verbs module


def test_every_rule_runs_the_verb_of_its_own_name_and_stamps_its_own_provenance():
    """Read from Snakemake's own DAG (every job of `all`, forced): each job's command runs the verb
    of its rule's name, and its stamp names that rule, its verb's params sections and code, and
    exactly the job's files."""
    jobs = snakemake_jobs(REPO)
    assert {"build_shards", "extract_features", "train_controlnet", "sample", "evaluate", "tables", "train_modular",
            "modular_noise", "concepts_figure", "qualitative_figure", "plot_losses"} <= {j.rule for j in jobs}
    for job in jobs:
        args = job_command(job)
        verb, stamp = args.verb, args.stamp
        assert verb == VERBS[job.rule].command, job.rule
        assert stamp["rule"] == job.rule and stamp["code"] == rule_code_hash(job.rule)
        assert stamp["inputs"] == list(job.inputs) and set(stamp["outputs"]) == set(job.outputs + job.metrics)
