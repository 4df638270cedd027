"""params.yaml schema validation: unknown, mistyped and missing keys are named by their path."""

import copy
import subprocess
import sys
from pathlib import Path

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
    vit_coco = config.load(REPO / "params.yaml", REPO / "config" / "paper.yaml", REPO / "config" / "paper-coco.yaml")
    config.validate(vit_coco)
    assert vit_coco["data"]["source"] == "coco" and vit_coco["modular"]["backbone"] == paper["modular"]["backbone"]
    detr = config.load(REPO / "params.yaml", *(REPO / "config" / f for f in ("paper.yaml", "paper-coco.yaml",
                                                                           "paper-detr.yaml")))
    config.validate(detr)
    assert detr["modular"]["backbone"] == "detr:facebook/detr-resnet-50" and detr["modular"]["image_size"] == [480, 640]
    assert detr["data"] == vit_coco["data"]
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
        (lambda c: c["controlnet"]["train"].update(loss="x0", snr_gamma=5.0),
         "controlnet.train.loss: 'x0' with controlnet.train.snr_gamma 5.0: two weightings, choose one"),
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
    assert config.modular_stage_names("detr:x") == ["bb", "enc", "dec", "pred"]


def test_typed_sections_are_frozen_dataclasses_of_the_schema_keys():
    typed = config.typed(shipped())
    assert isinstance(typed.controlnet, config.Controlnet) and isinstance(typed.controlnet.train, config.Train)
    assert isinstance(typed.diffusion.base.train, config.Train)  # one class per $defs entry
    assert typed.controlnet.train.steps == shipped()["controlnet"]["train"]["steps"]
    assert typed.modular.groups == ((0, 1), (2,), (3, 4, 5, 6))  # lists become tuples
    schema = config.schema()
    for name, node in schema["properties"].items():
        section = getattr(typed, name)
        assert [f for f in section.__dataclass_fields__] == sorted(node["properties"], key=lambda k: k not in
                                                                   node.get("required", node["properties"]))
    with pytest.raises(Exception, match="cannot assign"):
        typed.controlnet.train.steps = 1
    with pytest.raises(TypeError):
        typed.sampling.control_strength["x"] = 1.0  # free-keyed maps are read-only
    assert config.plain(typed) == shipped()


def test_a_verb_gets_only_its_sections_validated_and_typed():
    params = shipped()
    cfg = config.sections({"sampling": params["sampling"], "diffusion": params["diffusion"]}, "sampling", "diffusion")
    assert cfg.sampling.steps == params["sampling"]["steps"] and cfg.diffusion.base.resolution == 64
    assert not hasattr(cfg, "controlnet")
    with pytest.raises(config.ParamsError, match=r"--config lacks the params section\(s\) \['controlnet'\]"):
        config.sections({"sampling": params["sampling"]}, "sampling", "controlnet")
    bad = copy.deepcopy(params["diffusion"])
    bad["base"]["train"]["stepz"] = 3
    with pytest.raises(config.ParamsError, match=r"diffusion\.base\.train\.stepz: unknown key"):
        config.sections({"diffusion": bad}, "diffusion")
    assert config.section("diffusion.base", params["diffusion"]["base"]).train.lr == params["diffusion"]["base"]["train"]["lr"]
    assert type(config.section("controlnet.train.augment", params["controlnet"]["train"]["augment"])) is config.TrainAugment
    with pytest.raises(config.ParamsError, match="unknown params section 'diffusion.nope'"):
        config.section("diffusion.nope", {})


def _schema_has(path: list[str]) -> bool:
    node = config.schema()
    for key in path:
        if "properties" in node:
            if key not in node["properties"]:
                return False
            node = config._resolve(node["properties"][key])[0]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]  # a free-keyed map: any key
        else:
            return False
    return True


def _strings(path):
    """The string literals of a Python file (docstrings and f-string parts too), or a rule file's text."""
    import ast

    if path.suffix != ".py":
        return [path.read_text()]
    return [n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_every_key_path_a_message_names_exists():
    """Error messages and docs in the code name params by key path (``modular_analyses.token_noise.stages``):
    each such path in a string of the package or the rule files is a real path of the schema."""
    import re

    sections = "|".join(config.schema()["properties"])
    # not a module (featinv.metrics.fid), a Snakemake placeholder ({resources.gpu}) or a file (metrics.json)
    pattern = re.compile(rf"(?<![\w./{{])({sections})((?:\.[a-z_][a-z_0-9]*)+)(?!\w)")
    a_file = re.compile(r"\.(json|csv|md|png|zarr|yaml|tsv|html)$")
    paths = sorted((REPO / "src" / "featinv").rglob("*.py")) + sorted((REPO / "workflow").rglob("*.smk"))
    found, wrong = 0, []
    for path in paths:
        for text in _strings(path):
            for m in pattern.finditer(text):
                if a_file.search(m.group(0)):
                    continue
                found += 1
                keys = [m.group(1), *m.group(2).strip(".").split(".")]
                if not _schema_has(keys):
                    wrong.append(f"{path.relative_to(REPO)}: {'.'.join(keys)}")
    assert found > 40 and not wrong, wrong


def test_an_overlay_that_selects_fewer_splits_validates(tmp_path):
    """A val-only dataset: overlays merge mappings, so the default's per_class.train stays; as null
    (no limit) it is accepted, with a number it is named."""
    overlay = tmp_path / "val-only.yaml"
    overlay.write_text(yaml.safe_dump({
        "data": {"source": "imagefolder", "root": "/data/imagenet", "splits": ["val"], "views": {"splits": []}},
        "features": {"splits": ["val"]}}))
    merged = config.load(REPO / "params.yaml", overlay)
    assert merged["data"]["per_class"] == {"train": None, "val": 4}
    overlay.write_text(yaml.safe_dump({"data": {"splits": ["val"], "per_class": {"train": 5}, "views": {"splits": []}},
                                       "features": {"splits": ["val"]}}))
    with pytest.raises(config.ParamsError, match=r"data\.per_class\.train: 5 for a split that is not one of data\.splits \['val'\]"):
        config.load(REPO / "params.yaml", overlay)


# Each key the schema marks x-execution, and the test that shows outputs unchanged under two values.
EXECUTION_TESTS = {
    ("features", "batch_size"): "test_features.py::test_execution_keys_leave_the_stored_values_unchanged",
    ("features", "num_workers"): "test_features.py::test_execution_keys_leave_the_stored_values_unchanged",
    ("features", "device"): "test_features.py::test_execution_keys_leave_the_stored_values_unchanged",
    ("features", "rows_per_shard"): "test_features.py::test_execution_keys_leave_the_stored_values_unchanged",
    ("features", "rows_per_chunk"): "test_features.py::test_execution_keys_leave_the_stored_values_unchanged",
    ("diffusion", "device"): "test_training.py::test_target_execution_keys_leave_the_latents_unchanged",
    ("diffusion", "targets", "batch_size"): "test_training.py::test_target_execution_keys_leave_the_latents_unchanged",
    ("diffusion", "targets", "num_workers"): "test_training.py::test_target_execution_keys_leave_the_latents_unchanged",
    ("diffusion", "base", "train", "checkpoint_every"): "test_training.py::test_killed_training_resumes_to_the_same_weights",
    ("controlnet", "train", "checkpoint_every"): "test_training.py::test_killed_training_resumes_to_the_same_weights",
    ("sampling", "batch_size"): "test_diffusion.py::test_sampling_is_batch_size_invariant_and_survives_save_and_reload",
    ("sampling", "rows_per_shard"): "test_diffusion.py::test_sampling_is_batch_size_invariant_and_survives_save_and_reload",
    ("metrics", "batch_size"): "test_metrics.py::test_reconstructions_equal_to_originals_score_perfectly",
    ("metrics", "device"): "test_metrics.py::test_reconstructions_equal_to_originals_score_perfectly",
    ("modular_analyses", "batch_size"): "test_modular.py::test_analyses_stream_the_val_split_in_parts_with_the_same_results",
    ("inverse", "batch_size"): "test_inverse.py::test_inverse_execution_keys_change_nothing",
    ("inverse", "train", "checkpoint_every"): "test_inverse.py::test_inverse_execution_keys_change_nothing",
}


def test_every_execution_key_has_a_test_showing_its_outputs_unchanged():
    """A key is marked x-execution (left out of the params hash, the Snakemake trigger and dvc.yaml)
    only with a test that runs its verb's code under two values and compares the outputs."""
    assert set(config.execution_keys()) == set(EXECUTION_TESTS)
    for test in set(EXECUTION_TESTS.values()):
        file, name = test.split("::")
        assert f"def {name}(" in (REPO / "tests" / file).read_text(), test


def test_result_params_and_keys_leave_out_exactly_the_execution_keys():
    params = shipped()
    features = config.result_params("features", params["features"])
    assert set(params["features"]) - set(features) == {"batch_size", "num_workers", "device", "rows_per_shard",
                                                       "rows_per_chunk"}
    assert "batch_size" not in config.result_params("diffusion", params["diffusion"])["targets"]
    train = config.result_params("controlnet", config.section("controlnet", params["controlnet"]))["train"]
    assert "checkpoint_every" not in train and train["steps"] == params["controlnet"]["train"]["steps"]
    assert params["controlnet"]["train"]["checkpoint_every"]  # the input is left as it was
    keys = config.result_keys("controlnet")
    assert "controlnet.encoder" in keys and "controlnet.train.lr" in keys and "controlnet.train.augment" in keys
    assert not [k for k in keys if k.endswith("checkpoint_every") or k in ("controlnet", "controlnet.train")]
    assert config.result_keys("backbones") == ["backbones"]  # no execution key: the whole section


def test_the_typed_params_module_is_generated_from_the_schema():
    """featinv/paramtypes.py is what `python -m featinv.config` writes from the schema (rerun it after
    a schema change), and its annotations are the schema's types."""
    import dataclasses
    import typing

    from featinv import config, paramtypes

    assert Path(paramtypes.__file__).read_text() == config.types_source()
    hints = typing.get_type_hints(paramtypes.Train)
    assert hints["steps"] is int and hints["lr"] is float and hints["augment"] is paramtypes.TrainAugment
    assert typing.get_args(hints["lr_schedule"]) == ("constant", "cosine")
    assert hints["augment"] is paramtypes.TrainAugment and hints["augment"] is config.TrainAugment
    fields = {f.name for f in dataclasses.fields(paramtypes.Controlnet)}
    assert fields == set(config.schema()["properties"]["controlnet"]["properties"])
    typed = config.section("controlnet", config.load(REPO / "params.yaml")["controlnet"])
    assert isinstance(typed, paramtypes.Controlnet) and isinstance(typed.train.steps, int)
