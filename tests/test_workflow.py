"""The real workflow on a tiny config: Snakemake builds everything up to the tables, a second run has
nothing to do, `dvc repro` from scratch writes the same tables, a param change reruns only the
stages that read it, and after `dvc checkout` Snakemake still has nothing to do."""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, TEST_PHOTOS
from featinv import rowstore
from featinv.backbones.layers import valid_layers
from featinv.codedeps import rule_code
from featinv.config import deep_merge, load
from featinv.dvcyaml import parse_command

TINY = {
    "data": {"per_class": {"train": None, "val": 1}, "shard_maxcount": 8,
             "demo": {"image_size": 64, "train_crops": 1, "val_crops": 1, "photos": TEST_PHOTOS}},
    "backbones": {"names": ["tf_efficientnet_lite0"]},
    "features": {"batch_size": 4, "num_workers": 0, "rows_per_shard": 8, "rows_per_chunk": 4},
    # The shipped base model (models/demo-base), as the embedded default uses it.
    "diffusion": {"device": "cpu", "targets": {"batch_size": 8, "num_workers": 0}},
    "controlnet": {"encoder": {"hidden": 8, "depth": 1},
                   "train": {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "lr_warmup_steps": 0}},
    "sampling": {"steps": 2, "rows_per_shard": 4, "preview": 4},
    "metrics": {"batch_size": 12, "bootstrap": 200},
    "inverse": {"hidden": 8, "train": {"steps": 4, "batch_size": 4, "checkpoint_every": 2, "lr_warmup_steps": 0}},
    "modular": {"image_size": 32, "hidden": 8, "steps": 3, "batch_size": 4, "instances": 1},
    "modular_analyses": {"examples": 2, "finetune": {"steps": 2, "lambdas": [0.0, 1.0]}},
    "applications": {"interpolation": {"pairs": [[0, 5]]}, "composition": {"pairs": [[0, 5]]},
                     "qualitative": {"images": 2, "samples": 2}},
}


def run(cmd, cwd, stderr_too=True, **kw):
    """Run ``cmd`` in ``cwd``; fail with its output unless it succeeds; return stdout (+ stderr)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # 30 minutes a command: CI runs this test beside the paper-scale rehearsal, on the same 2 cores
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr if stderr_too else proc.stdout


def make_project(root: Path, overrides: dict = TINY) -> Path:
    """A copy of the workflow at ``root`` with params.yaml overlaid by ``overrides``."""
    root.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "dvc.yaml", "workflow", "config", "profiles", ".gitignore", ".dvcignore"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    (root / "models").symlink_to(REPO / "models")  # the shipped base model
    params = deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # dvc.yaml names the code it depends on: link the package source into the copy.
    (root / "src").symlink_to(REPO / "src")
    # The DAG of these params has other jobs (one backbone): generate its dvc.yaml, as a user would.
    run([sys.executable, "-m", "featinv.dvcyaml"], root)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("project"))


def snakemake_outputs(root) -> dict[str, set[str]]:
    """Rule name -> every output its jobs write in the whole DAG (`snakemake --summary`)."""
    outputs: dict[str, set[str]] = {}
    for line in run([sys.executable, "-m", "snakemake", "--summary", "--quiet"], root).splitlines()[1:]:
        fields = line.split("\t")
        if len(fields) >= 3:
            outputs.setdefault(fields[2], set()).add(fields[0])
    return outputs


def dvc_outputs(root) -> dict[str, set[str]]:
    """Rule name (from each stage's `--allowed-rules`) -> the outs of its DVC stages."""
    from dvc.repo import Repo

    outputs: dict[str, set[str]] = {}
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            words = stage.cmd.split()
            rule = words[words.index("--allowed-rules") + 1]
            target = words[-1]
            outs = {str(o.def_path) for o in stage.outs}
            assert target in outs, f"stage {stage.name} asks Snakemake for {target}, which it does not declare"
            outputs.setdefault(rule, set()).update(outs)
    return outputs


def test_dvc_stages_and_snakemake_rules_declare_the_same_outputs(project):
    if not (project / ".dvc").exists():
        run(["git", "init", "-q"], project)
        run([sys.executable, "-m", "dvc", "init", "-q"], project)
    snake, dvc = snakemake_outputs(project), dvc_outputs(project)
    snake.pop("all", None)
    assert sorted(snake) == sorted(dvc)
    for rule in snake:
        assert snake[rule] == dvc[rule], f"rule {rule}: Snakemake {sorted(snake[rule])} vs DVC {sorted(dvc[rule])}"


GPUS2 = "resources:\n  gpus: 2\n"


def planned_processes(project, target, *overlays) -> dict[str, str | None]:
    """featinv verb -> its --processes value, for every job of a forced dry run of ``target``."""
    configs = ["--configfile", *overlays] if overlays else []  # one flag: a repeated --configfile replaces the earlier
    plan = run([sys.executable, "-m", "snakemake", target, "-n", "-p", "-F", *configs], project)
    commands = [line.split("Shell command: ", 1)[1] for line in plan.splitlines() if "Shell command: " in line]
    commands = [c for c in commands if c.strip() != "None"]  # an aggregate rule (e.g. modular) runs nothing
    processes = {}
    for cmd in commands:
        args = parse_command(cmd)
        processes[args.verb] = str(args.processes) if "--processes" in cmd.split() else None
    return processes


def test_gpu_count_is_the_process_count_of_the_rules_that_split_their_work(project):
    (project / "gpus2.yaml").write_text(GPUS2)
    # The shipped base model: no train-base job in the main job.
    assert planned_processes(project, "results/table1.csv", "gpus2.yaml") == {
        "build-shards": None, "extract-features": "2", "encode-targets": None, "train-controlnet": "2", "sample": "2",
        "score-originals": None, "evaluate": None, "tables": None}
    # The overlay that made it trains it with rule train_base.
    assert planned_processes(project, "data/models/demo-base/base", "config/demo-base.yaml", "gpus2.yaml") == {
        "build-shards": None, "encode-targets": None, "train-base": "2"}


def test_the_paper_overlays_plan_every_modular_analysis(project):
    """ViT on ImageNet (config/paper.yaml) and on COCO (+ config/paper-coco.yaml), DETR (+
    config/paper-detr.yaml, whose resources still name the ViT's modular_attention): every analysis
    rule of the forward model's family is planned; ViT and DETR share COCO's shards, not their
    inverses or results."""
    common = {"train-modular", "modular-mse", "modular-prediction", "modular-colour", "modular-noise", "modular-layers",
              "modular-finetune"}
    vit, coco, detr = ("config/paper.yaml",), ("config/paper.yaml", "config/paper-coco.yaml"), (
        "config/paper.yaml", "config/paper-coco.yaml", "config/paper-detr.yaml")
    assert set(planned_processes(project, "modular", *vit)) == {"build-shards", "modular-attention", *common}
    assert set(planned_processes(project, "modular", *coco)) == {"build-shards", "modular-attention", *common}
    assert set(planned_processes(project, "modular", *detr)) == {"build-shards", "modular-detection", *common}
    plans = {name: run([sys.executable, "-m", "snakemake", "modular", "-n", "-p", "-F", "--configfile", *overlays],
                       project) for name, overlays in (("vit", coco), ("detr", detr))}
    for name, run_dir in (("vit", "vit_base_patch16_224.augreg_in1k"), ("detr", "detr-facebook-detr-resnet-50")):
        assert f"--model-dir data/models/coco/modular/{run_dir} " in plans[name]
        assert f"--out-dir results/modular/coco/{run_dir} " in plans[name]
        assert "--shards data/shards/coco " in plans[name]


def test_an_overlay_listing_fewer_backbones_narrows_the_paper_run(project):
    """The paper overlay plus `backbones: {names: [resnet50.tv_in1k]}` (one GPU's worth) validates and
    plans ResNet50's jobs only, `all` included: ConvNeXt's 288 px is left aside with a note, the
    figures use ResNet50, the layer study (a ConvNeXt layer) is off. The modular forward model's
    weights may be named in backbones.weights, where the offline message says."""
    (project / "narrow.yaml").write_text("backbones:\n  names: [resnet50.tv_in1k]\n  weights:\n"
                                         "    vit_base_patch16_224.augreg_in1k: /weights/vit.safetensors\n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "all", "-n", "-p", "-F", "--configfile",
                           "config/paper.yaml", "narrow.yaml"], cwd=project, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert "note: backbones.input_size.convnext_base.fb_in22k_ft_in1k: not one of backbones.names" in out
    assert "the figures use 'resnet50.tv_in1k'" in out and "no layer study" in out
    assert "--backbone resnet50.tv_in1k " in out
    assert not [line for line in out.splitlines() if "convnext" in line and not line.startswith("note:")]
    assert "--model data/models/imagenet/controlnet/resnet50.tv_in1k-unpooled" in out  # the application figures
    assert "vit.safetensors" in out  # kept for train_modular (its --config)
    load(REPO / "params.yaml", REPO / "config/paper.yaml", project / "narrow.yaml")  # featinv validate agrees


def test_a_second_layer_plans_its_own_jobs_and_a_wrong_one_stops_before_any(project):
    """features.layer at paper scale: a second ConvNeXt layer gets its own extraction, ControlNets,
    sampling and evaluation (source id name@layer in every path); a layer that does not exist stops
    the workflow before any job, naming the valid ones."""
    convnext = "convnext_base.fb_in22k_ft_in1k"
    (project / "layer.yaml").write_text(f"features:\n  layer:\n    {convnext}: [last, stages.1]\n")
    plan = run([sys.executable, "-m", "snakemake", "results/table1.csv", "-n", "-p", "-F", "--configfile",
                "config/paper.yaml", "layer.yaml"], project)
    source = f"{convnext}@stages.1"
    for expected in (f"extract-features --backbone {source} ", f"--store data/features/imagenet/{source}/val.zarr",
                     f"--shards data/shards/imagenet --backbone {source} --variant unpooled",  # online views
                     f"--out data/models/imagenet/controlnet/{source}-unpooled ",
                     f"--out data/models/imagenet/controlnet/{source}-pooled ",
                     f"--out data/samples/imagenet/{source}-unpooled/val.zarr ",
                     f"--out results/metrics/imagenet/{source}-unpooled-val.json "):
        assert expected in plan, expected
    assert f"--stores data/features/imagenet/{source}/val.zarr data/features/imagenet/resnet50.tv_in1k/val.zarr" in plan
    (project / "typo.yaml").write_text(f"features:\n  layer:\n    {convnext}: stage.2\n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "config/paper.yaml", "typo.yaml"],
                          cwd=project, capture_output=True, text=True)
    assert proc.returncode != 0 and "rule " not in proc.stdout
    assert (f"backbone '{convnext}' has no layer 'stage.2'; valid layers: last, stages.0, stages.1, stages.2, "
            "stages.3") in proc.stdout + proc.stderr
    # The layer names are cached per timm version (no torch import at planning after the first plan).
    cache = json.loads((project / ".snakemake" / "featinv-layers.json").read_text())
    assert cache[f"{convnext} timm=={importlib.metadata.version('timm')}"] == valid_layers(convnext)


def test_resources_of_an_unknown_rule_are_a_clear_error(project):
    (project / "typo.yaml").write_text("resources:\n  runtime: {default: 30, train_controlnets: 600}\n")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "typo.yaml"], cwd=project,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "params resources.runtime: no rule named train_controlnets" in proc.stdout + proc.stderr


def stage_rule(root, stage: str) -> str:
    """The rule a DVC stage (``name`` or ``name@item``) runs: its command's ``--allowed-rules``."""
    words = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage.split("@")[0]]["cmd"].split()
    return words[words.index("--allowed-rules") + 1]


def stages_run(output: str, root) -> set[str]:
    """The rules of the stages that `dvc repro` ran."""
    return {stage_rule(root, line.split("'")[1]) for line in output.splitlines() if line.startswith("Running stage")}


def set_param(root, section, key, value):
    params = yaml.safe_load((root / "params.yaml").read_text())
    params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def check_all_outputs(project):
    """The figures and modular analyses of `all`, beyond the tables."""
    assert (project / "results/base/demo/samples.png").exists()
    assert (project / "results/figures/demo/training-loss.png").exists()
    mse = (project / "results/modular/demo/tf_efficientnet_lite0/mse_by_stage.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in mse[1:]] == ["stem", "blocks1", "blocks2", "blocks3", "head", "pred"]
    params_rows = [line.split(",") for line in (project / "results/modular/demo/tf_efficientnet_lite0/params.csv").read_text().splitlines()]
    total = [r for r in params_rows if r[0] == "total"][0]
    assert int(total[3]) == sum(int(r[2]) for r in params_rows[1:7])  # classic = sum of the modular paths
    figures = project / "results/figures/demo"
    interp = [line.split(",") for line in (figures / "interpolation.csv").read_text().splitlines()[1:]]
    assert [float(r[2]) for r in interp] == [0.0, 0.25, 0.5, 0.75, 1.0]
    composed = {r[2]: r[3] for r in (line.split(",") for line in (figures / "composition.csv").read_text().splitlines()[1:])}
    # the same map with the same seed is the same image, whichever figure batches it with what
    assert (interp[0][3], interp[-1][3]) == (composed["a"], composed["b"])
    concepts = [line.split(",") for line in (figures / "concepts.csv").read_text().splitlines()[1:]]
    assert [r[1] for r in concepts] == ["concept0", "concept1", "concept2", "complement"]
    assert sum(int(r[2]) for r in concepts) == 1280  # the subspaces and their complement span the channels
    assert len((figures / "qualitative.csv").read_text().splitlines()) == 1 + 2 * 2  # 2 maps x 2 models
    assert len((figures / "variability.csv").read_text().splitlines()) == 1 + 2 * 2  # 2 maps x 2 seeds
    modular = project / "results/modular/demo/tf_efficientnet_lite0"
    colour = [line.split(",")[0] for line in (modular / "colour_pairwise_mse.csv").read_text().splitlines()[1:]]
    assert colour == ["input", "stem", "blocks1", "blocks2", "blocks3", "head", "pred"]
    assert len((modular / "colour_accuracy.csv").read_text().splitlines()) == 1 + 7
    assert [line.split(",")[0] for line in (modular / "token_noise.csv").read_text().splitlines()[1:]] == [
        "stem_man", "blocks1_man", "blocks1_man+", "stem_man local", "blocks1_man local", "blocks1_man+ local"]
    assert [line.split(",")[:2] for line in (modular / "finetune.csv").read_text().splitlines()[1:]] == [
        ["fine-tuned", "0"], ["fine-tuned", "1"], ["modular", "nan"], ["classic", "nan"]]
    assert (modular / "layers_mse.csv").exists() and (modular / "colour_plot.png").exists()


@pytest.mark.slow
def test_snakemake_and_dvc_build_the_same_tables(project, tmp_path):
    snake = [sys.executable, "-m", "snakemake", "--cores", "2"]
    dvc = [sys.executable, "-m", "dvc"]
    git = ["git", "-c", "user.name=featinv-test", "-c", "user.email=test@featinv"]
    run(snake + ["results/table1.csv"], project)
    stores = sorted((project / "data" / "features" / "demo").glob("*/*.zarr"))
    assert [p.relative_to(project).as_posix() for p in stores] == [
        "data/features/demo/tf_efficientnet_lite0/train.zarr",
        "data/features/demo/tf_efficientnet_lite0/val.zarr",
    ]
    for variant in ("unpooled", "pooled"):
        samples = rowstore.open_complete(project / f"data/samples/demo/tf_efficientnet_lite0-{variant}/val.zarr")
        assert samples["images"].shape == (12, 1, 3, 64, 64)
        model = project / f"data/models/demo/controlnet/tf_efficientnet_lite0-{variant}"
        meta = json.loads((model / "featinv.json").read_text())
        assert meta["variant"] == variant and meta["steps"] == 4 and meta["base_model"] == "models/demo-base"
        # one params hash: the job's stamp (from the rule's params) and the model's own records agree
        assert meta["params_hash"] == json.loads((model / "training.json").read_text())["params_hash"] \
            == json.loads((model / "provenance.json").read_text())["params_hash"]
        metrics = json.loads((project / f"results/metrics/demo/tf_efficientnet_lite0-{variant}-val.json").read_text())
        assert metrics["n_images"] == 12 and -1 <= metrics["cosine_sim"]["mean"] <= 1
    table1 = (project / "results/table1.csv").read_text()
    header, *rows = table1.splitlines()
    assert "fid[tf_efficientnet_lite0 pooled, N=12]" in header
    assert [r.split(",")[:3] for r in rows] == [["tf_efficientnet_lite0", "last", "unpooled"],
                                               ["tf_efficientnet_lite0", "last", "pooled"]]
    assert (project / "results/table2.csv").read_text().startswith("conditioning,tf_efficientnet_lite0:top5")
    assert "Nothing to be done" in run(snake + ["-n", "results/table1.csv"], project)

    # dvc repro from scratch builds all of it (each stage asks Snakemake for its own targets), with
    # the same table byte for byte; afterwards Snakemake, too, has nothing to do.
    manifest = json.loads((project / "data/shards/demo/manifest.json").read_text())
    features = rowstore.open_complete(stores[1])["features"][:]
    shutil.rmtree(project / "data")
    shutil.rmtree(project / "results")
    if not (project / ".dvc").exists():
        run(["git", "init", "-q"], project)
        run(dvc + ["init", "-q"], project)
    run(dvc + ["repro"], project)
    assert (project / "results/table1.csv").read_text() == table1
    table_metrics = (project / "results/metrics.json").read_text()
    assert json.loads((project / "data/shards/demo/manifest.json").read_text()) == manifest
    np.testing.assert_array_equal(rowstore.open_complete(stores[1])["features"][:], features)
    check_all_outputs(project)
    assert "up to date" in run(dvc + ["status"], project)
    # Editing a module reports exactly the stages whose verbs import it (dvc.yaml's code deps).
    (project / "src").unlink()
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    assert "up to date" in run(dvc + ["status"], project)
    edited = project / "src/featinv/rowstore.py"
    original = edited.read_text()
    edited.write_text(original + "\n# an edit\n")
    reported = {stage_rule(project, line.rstrip(":")) for line in run(dvc + ["status"], project).splitlines()
                if line.endswith(":") and not line.startswith((" ", "\t"))}
    importers = {rule for rule, files in rule_code().items() if "src/featinv/rowstore.py" in files} & set(dvc_outputs(project))
    assert reported == importers and {"extract_features", "sample", "tables"} <= reported
    assert not reported & {"build_shards", "plot_losses"}  # train_modular reads its representation store (rowstore)
    assert "train_modular" in reported
    edited.write_text(original)
    assert "up to date" in run(dvc + ["status"], project)
    assert "didn't change" in run(dvc + ["repro"], project)
    assert "tf_efficientnet_lite0/unpooled" in run(dvc + ["metrics", "show"], project)
    assert "Nothing to be done" in run(snake + ["-n"], project)
    # Resources (GPUs, memory, runtime) never rerun anything.
    (project / "gpus2.yaml").write_text(GPUS2)
    assert "Nothing to be done" in run(snake + ["-n", "--configfile", "gpus2.yaml"], project)
    # An analysis param reruns the analyses, never the inverses' training.
    set_param(project, "modular_analyses", "examples", 3)
    planned = run(snake + ["-n", "modular"], project)
    assert "modular_colour" in planned and "rule train_modular" not in planned and "train_modular " not in planned
    set_param(project, "modular_analyses", "examples", 2)
    run(snake + ["--report", "results/report.html"], project)
    html = (project / "results/report.html").read_text(errors="replace")
    assert "Table 1" in html and "training-loss.png" in html

    # Round trip through a DVC remote: push, fresh clone, pull; everything is up to date for DVC and
    # for Snakemake (which sees fresh mtimes and no metadata of its own in the clone).
    remote = tmp_path / "remote"
    run(dvc + ["remote", "add", "-d", "-f", "test", str(remote)], project)
    run(dvc + ["push", "-q"], project)
    run(git + ["add", "-A"], project)
    run(git + ["commit", "-q", "-m", "pipeline at TINY scale"], project)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "data/features").exists()
    run(dvc + ["pull", "-q"], clone)
    assert (clone / "results/table1.csv").read_text() == table1
    assert "up to date" in run(dvc + ["status"], clone)
    # The README's step after a pull: DVC confirms the outputs, Snakemake records them as built.
    run(["featinv", "sync", "results/table1.csv"], clone)
    assert "Nothing to be done" in run(snake + ["-n", "results/table1.csv"], clone)

    # The reproduction: a sampling param changed after the pull reruns sample, evaluate and
    # tables in one plain `snakemake` invocation; Table 1 changes; both tools then call it up to date.
    set_param(clone, "sampling", "guidance_scale", 2.5)
    refused = subprocess.run([sys.executable, "-m", "featinv", "sync", "results/table1.csv"], cwd=clone,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "sample@" in refused.stderr  # DVC sees the stale samples: nothing is marked
    ran = run(snake + ["results/table1.csv"], clone)
    assert all(message in ran for message in ("Reconstructing val", "Scoring", "Assembling Table 1"))  # the rules' messages
    assert "Training the FeatInv ControlNet" not in ran
    assert (clone / "results/table1.csv").read_text() != table1
    assert "Nothing to be done" in run(snake + ["-n", "results/table1.csv"], clone)
    assert "up to date" in run(dvc + ["status", "tables", "--with-deps"], clone)  # Snakemake's onsuccess: dvc commit
    set_param(clone, "sampling", "guidance_scale", 1.75)
    run(snake + ["results/table1.csv"], clone)
    assert (clone / "results/table1.csv").read_text() == table1  # same params, same samples, same table
    # `all` as a user runs it, under params.yaml with the DVC record on (the onsuccess `dvc commit`):
    # recording the outputs keeps their modification times, so a second plan has nothing to do. The
    # issue's case: the six modular analyses rerun, and the commit rewrote the inverses they read.
    run(["featinv", "sync"], clone)
    set_param(clone, "modular_analyses", "examples", 3)
    ran = run(snake, clone)
    assert "modular_colour" in ran and "train_modular" not in ran
    assert "Nothing to be done" in run(snake + ["-n"], clone)
    assert "up to date" in run(dvc + ["status"], clone)
    # an execution key changed (a smaller node's loader) plans nothing in either tool
    set_param(clone, "features", "num_workers", 1)
    assert "Nothing to be done" in run(snake + ["-n"], clone)
    assert "up to date" in run(dvc + ["status"], clone)
    set_param(clone, "features", "num_workers", 0)

    # An experiment with another sampling seed reruns sampling and what reads samples, and records
    # its metrics next to the baseline's.
    ran = stages_run(run(dvc + ["exp", "run", "-n", "seed101", "-S", "sampling.seed=101"], clone), clone)
    figures = {"concepts_figure", "interpolation_figure", "composition_figure", "qualitative_figure"}
    assert {"sample", "evaluate", "tables"} | figures <= ran <= {"sample", "preview_samples", "preview_base", "evaluate",
                                                                 "tables", "compare", "layer_study"} | figures
    shown = json.loads(run(dvc + ["exp", "show", "--json"], clone, stderr_too=False))
    baseline = next(row for row in shown if row["rev"] != "workspace")
    experiment = next(e["revs"][0] for e in baseline["experiments"] if e["name"] == "seed101")
    data = lambda row, kind, name: row["data"][kind][name]["data"]
    assert data(baseline, "params", "params.yaml")["sampling"]["seed"] == 100
    assert data(experiment, "params", "params.yaml")["sampling"]["seed"] == 101
    before = data(baseline, "metrics", "results/metrics.json")["table1"]["tf_efficientnet_lite0/unpooled"]
    after = data(experiment, "metrics", "results/metrics.json")["table1"]["tf_efficientnet_lite0/unpooled"]
    assert before == json.loads(table_metrics)["table1"]["tf_efficientnet_lite0/unpooled"]
    assert after["cosine_sim"] != before["cosine_sim"]  # other samples, other scores

    # A feature param reruns from features on (as far as the ControlNets, to keep this test short).
    set_param(project, "features", "topk", 6)
    ran = stages_run(run(dvc + ["repro", "train_controlnet"], project), project)
    assert ran == {"extract_features", "train_controlnet"}
