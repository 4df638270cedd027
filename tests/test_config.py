"""params.yaml schema validation: unknown, mistyped and missing keys are named by their path."""

import copy
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from featinv import config


def shipped():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_params_survive_a_dvc_experiment_rewrite(tmp_path):
    """`dvc exp run -S key=value` rewrites params.yaml with YAML 1.2 rules (dropping quotes), and
    Snakemake reads it with YAML 1.1 rules: no value may change meaning on the way (a quoted
    "no" would come back as False)."""
    from dvc.utils.serialize import modify_yaml

    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    with modify_yaml(path) as data:
        data["sampling"]["seed"] = 101
    rewritten = config.load(path)  # validates
    expected = shipped()
    expected["sampling"]["seed"] = 101
    assert rewritten == expected


def test_shipped_params_and_paper_overlay_validate():
    cfg = config.load(REPO / "params.yaml")
    assert cfg["data"]["source"] == "demo"
    paper = config.load(REPO / "params.yaml", REPO / "config" / "paper.yaml")
    assert paper["backbones"]["names"] == [
        "resnet50.tv_in1k",
        "convnext_base.fb_in22k_ft_in1k",
        "swinv2_base_window12to24_192to384.ms_in22k_ft_in1k",
    ]
    assert paper["data"]["per_class"]["val"] == 10
    detr = config.load(REPO / "params.yaml", REPO / "config" / "paper.yaml", REPO / "config" / "paper-detr.yaml")
    config.validate(detr)
    assert detr["modular"]["backbone"] == "detr:facebook/detr-resnet-50" and detr["modular"]["image_size"] == [480, 640]
    # Mappings merge: keys the overlay does not name keep the params.yaml value.
    assert paper["data"]["demo"] == cfg["data"]["demo"]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c["data"].update(shard_maxcont=3), "data.shard_maxcont: unknown key"),
        (lambda c: c["features"].update(batch_size="32"), "features.batch_size: '32' is not of type 'integer'"),
        (lambda c: c["data"]["demo"].pop("seed"), "data.demo.seed: missing required key"),
        (lambda c: c.update(extra={}), "extra: unknown key"),
        (lambda c: c["data"].update(source="folder"), "data.source: 'folder' is not one of"),
        (lambda c: c["features"].update(splits=["train", "test"]), "features.splits: 'test' is not one of data.splits"),
        (lambda c: c["features"].update(rows_per_chunk=7), "features.rows_per_chunk: 7 must divide"),
    ],
)
def test_invalid_params_name_the_key(mutate, expected):
    cfg = copy.deepcopy(shipped())
    mutate(cfg)
    with pytest.raises(config.ParamsError) as err:
        config.validate(cfg)
    assert expected in str(err.value)


def test_deep_merge_replaces_lists_and_merges_mappings():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2}
    merged = config.deep_merge(base, {"a": {"y": [3]}, "c": 3})
    assert merged == {"a": {"x": 1, "y": [3]}, "b": 2, "c": 3}
    assert base["a"]["y"] == [1, 2]


def test_snakemake_stops_before_any_job_on_a_schema_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("features:\n  batch_sise: 8\n")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", str(bad)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "features.batch_sise: unknown key" in out
    assert "Job stats" not in out


def test_modular_stage_names_are_checked_against_the_backbone():
    cfg = config.load(REPO / "params.yaml")
    cfg["modular_analyses"]["token_noise"]["stages"] = ["stem", "enc"]
    with pytest.raises(config.ParamsError, match=r"modular_analyses\.token_noise\.stages: 'enc' is not a stage of "
                                                 r"tf_efficientnet_lite0 \(stem, blocks1, blocks2, blocks3, head, pred\)"):
        config.validate(cfg)


def test_forward_family_names_how_a_modular_backbone_is_staged():
    assert config.forward_family("detr:facebook/detr-resnet-50") == "detr"
    assert config.forward_family("vit_base_patch16_224.augreg_in21k_ft_in1k") == "vit"
    assert config.forward_family("tf_efficientnet_lite0") == "cnn"
    assert config.modular_stage_names({"backbone": "detr:x"}) == ["bb", "enc", "dec", "pred"]
