"""No stale result: a change of any params section a verb reads, or of the source a verb runs, makes
plain `snakemake` plan exactly the jobs of the rules that read it and every job downstream of them
(the closure is computed from Snakemake's own DAG, not listed by hand); the provenance guard refuses a
metrics file whose samples have changed since it was made.

The planning tests need no real outputs: every output of `all` is made as an empty placeholder and
`snakemake --touch` records them as built (what `featinv sync` does after `dvc pull`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from featinv import provenance
from featinv.cli import VERBS, main
from featinv.codedeps import rule_code
from featinv.config import execution_keys
from featinv.dvcyaml import Job, snakemake_jobs
from test_workflow import make_project

FILE_SUFFIXES = {".csv", ".json", ".png", ".md", ".tsv", ".safetensors", ".html", ".txt"}


def snake(root: Path, *args: str) -> str:
    # featinv imported from the project's own copy of the source, so that the tests can edit it
    env = {**os.environ, "PYTHONPATH": str(root / "src"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def planned(root: Path) -> Counter:
    """Rule -> number of jobs `snakemake -n` plans for the default target (target-only rules such as
    `all` left out: they run nothing)."""
    out = snake(root, "-n")
    if "Nothing to be done" in out:
        return Counter()
    table = out.split("Job stats:", 1)[1].split("total", 1)[0]
    return Counter({m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)
                    if m.group(1) in VERBS})


def downstream(jobs: list[Job], start: list[Job]) -> Counter:
    """Rule -> number of jobs in the closure of ``start`` under 'reads an output of'."""
    closure = set(map(id, start))
    outputs = {o: j for j in jobs for o in j.outputs + j.metrics}
    changed = True
    while changed:
        changed = False
        for job in jobs:
            if id(job) in closure:
                continue
            for inp in job.inputs:
                producer = outputs.get(inp)
                if producer is None:  # a file inside a directory output
                    producer = next((j for o, j in outputs.items() if inp.startswith(o + "/")), None)
                if producer is not None and id(producer) in closure:
                    closure.add(id(job))
                    changed = True
                    break
    return Counter(j.rule for j in jobs if id(j) in closure)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A workflow copy (tiny params, its own copy of the source) whose every output of `all` exists
    as a placeholder and is recorded as built, with its DAG's jobs."""
    root = make_project(tmp_path_factory.mktemp("stale"))
    (root / "src").unlink()
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    jobs = snakemake_jobs(root)
    for job in jobs:
        for out in job.outputs + job.metrics:
            path = root / out
            if path.suffix in FILE_SUFFIXES:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}" if path.suffix == ".json" else "")
            else:
                path.mkdir(parents=True, exist_ok=True)
    snake(root, "--touch", "--forceall", "--quiet", "all")
    assert planned(root) == Counter()
    return root, jobs


def _leaf(tree: dict, path=(), skip=()):
    """The first numeric leaf of a params section that decides outputs (not an execution key), as a
    key path."""
    for key, value in tree.items():
        if isinstance(value, bool) or path + (key,) in skip:
            continue
        if isinstance(value, (int, float)):
            return path + (key,)
        if isinstance(value, dict):
            found = _leaf(value, path + (key,), skip)
            if found:
                return found
    return None


def _sections():
    return sorted({s for v in VERBS.values() for s in v.sections})


@pytest.mark.parametrize("section", _sections())
def test_a_params_change_reruns_the_rules_that_read_it_and_everything_downstream(built, section):
    root, jobs = built
    original = (root / "params.yaml").read_text()
    params = yaml.safe_load(original)
    leaf = _leaf(params[section], skip=execution_keys(section))
    node = params[section]
    if leaf is None:  # no numeric leaf (backbones): give the first backbone an input size
        node["input_size"][params["backbones"]["names"][0]] = 200
    else:
        for key in leaf[:-1]:
            node = node[key]
        node[leaf[-1]] = node[leaf[-1]] + 1 if isinstance(node[leaf[-1]], int) else node[leaf[-1]] * 0.5
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        readers = [j for j in jobs if section in VERBS[j.rule].sections]
        expected = downstream(jobs, readers)
        assert expected, f"no job of `all` reads params section {section}"
        assert planned(root) == expected
    finally:
        (root / "params.yaml").write_text(original)
    assert planned(root) == Counter()


@pytest.mark.parametrize("module", ["src/featinv/metrics/evaluate.py", "src/featinv/diffusion/sample.py",
                                    "src/featinv/rowstore.py"])
def test_a_code_edit_reruns_the_rules_whose_verbs_run_it_and_everything_downstream(built, module):
    root, jobs = built
    path = root / module
    original = path.read_text()
    path.write_text(original + "\n_STALENESS_PROBE = 1\n")  # a change of what the module does
    try:
        readers = [j for j in jobs if module in rule_code()[j.rule]]
        expected = downstream(jobs, readers)
        assert expected
        assert planned(root) == expected
    finally:
        path.write_text(original)
    assert planned(root) == Counter()


def test_execution_keys_changed_plan_nothing(built):
    """Every key the schema marks x-execution (workers, inference batch sizes, devices, checkpoint
    cadence, store layout) changed at once plans nothing: none of them is a trigger on its own."""
    root, jobs = built
    original = (root / "params.yaml").read_text()
    params = yaml.safe_load(original)
    marked = execution_keys()
    assert {("features", "num_workers"), ("controlnet", "train", "checkpoint_every"),
            ("sampling", "batch_size"), ("metrics", "device")} <= set(marked)
    for path in marked:
        node = params
        for key in path[:-1]:
            node = node[key]
        value = node[path[-1]]
        node[path[-1]] = ("cpu" if value == "auto" else "auto") if isinstance(value, str) else value + 1
    if params["features"]["rows_per_shard"] % params["features"]["rows_per_chunk"]:
        params["features"]["rows_per_shard"] = 2 * params["features"]["rows_per_chunk"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        assert planned(root) == Counter()
    finally:
        (root / "params.yaml").write_text(original)


def test_comment_and_docstring_edits_plan_nothing(built):
    """A comment or docstring added to every source file a verb runs plans nothing: the code hash is
    taken over the parsed code."""
    root, jobs = built
    files = sorted({f for files in rule_code().values() for f in files})
    originals = {f: (root / f).read_text() for f in files}
    try:
        for f, text in originals.items():
            edited = text.replace('"""', '"""Edited. ', 1) if text.lstrip().startswith('"""') else text
            (root / f).write_text("# a comment\n" + edited.replace("\n", "  # note\n", 1) + "\n# the end\n")
        assert planned(root) == Counter()
    finally:
        for f, text in originals.items():
            (root / f).write_text(text)


def test_the_closure_is_what_the_issue_describes(built):
    """The reproduction of the issue, named: guidance reruns sample -> evaluate -> tables (and the
    figures that read samples); the ControlNet's learning rate reruns its training too."""
    root, jobs = built
    sample = downstream(jobs, [j for j in jobs if j.rule == "sample"])
    assert {"sample", "evaluate", "tables", "preview_samples", "qualitative_figure"} <= set(sample)
    assert "train_controlnet" not in sample
    train = downstream(jobs, [j for j in jobs if j.rule == "train_controlnet"])
    assert {"train_controlnet", "sample", "evaluate", "tables"} <= set(train)


# The guard: provenance recorded in outputs and checked by their readers.

def _stamped_pipeline(tmp_path: Path):
    """samples (a directory) -> metrics JSON + per-image CSV, stamped as the pipeline stamps them."""
    os.chdir(tmp_path)
    Path("samples.zarr").mkdir()
    (Path("samples.zarr") / "images").write_bytes(b"pixels")
    provenance.stamp("sample", "p1", "c1", ["model"], ["samples.zarr"])
    Path("m").mkdir()
    Path("m/metrics.json").write_text(json.dumps({"cosine_sim": {"mean": 0.5}}))
    Path("m/per-image.csv").write_text("key,cosine_sim\na,0.5\n")
    provenance.stamp("evaluate", "p2", "c2", ["samples.zarr"], ["m/metrics.json", "m/per-image.csv"])


def test_a_stamp_records_rule_params_code_and_input_identities(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _stamped_pipeline(tmp_path)
    samples = provenance.read_stamp("samples.zarr")
    metrics = provenance.read_stamp("m/metrics.json")
    assert samples["inputs"] == {"model": "missing"} and samples["rule"] == "sample"
    assert metrics["inputs"] == {"samples.zarr": samples["id"]}
    assert metrics["outputs"]["m/per-image.csv"] == provenance.content_hash("m/per-image.csv")
    assert set(metrics["outputs"]) == {"m/per-image.csv", "m/metrics.json"}  # the JSON's own content too
    assert json.loads(Path("m/metrics.json").read_text())["cosine_sim"] == {"mean": 0.5}  # content kept
    assert provenance.check(["m/metrics.json", "m/per-image.csv"]) == []
    # the same job with other params, code or inputs gives its outputs another identity
    ident = samples["id"]
    for args in (("p9", "c1", ["model"]), ("p1", "c9", ["model"]), ("p1", "c1", ["model", "other"])):
        assert provenance.make_stamp("sample", *args, ["samples.zarr"])["id"] != ident
    assert provenance.make_stamp("sample", "p1", "c1", ["model"], ["samples.zarr"])["id"] == ident


def test_the_guard_refuses_metrics_of_samples_that_changed_since(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _stamped_pipeline(tmp_path)
    provenance.stamp("sample", "p1-other-guidance", "c1", ["model"], ["samples.zarr"])  # samples redone
    with pytest.raises(provenance.StaleError, match=r"m/metrics.json is stale: its input samples.zarr has changed"):
        provenance.check(["m/metrics.json"], target="results/table1.csv")
    # the per-image CSV is checked through the metrics JSON its job wrote with it
    with pytest.raises(provenance.StaleError, match="m/metrics.json is stale"):
        provenance.check(["m/per-image.csv"])
    Path("m/per-image.csv").write_text("key,cosine_sim\na,0.9\n")  # a hand-edited CSV
    with pytest.raises(provenance.StaleError, match="m/per-image.csv is not the file evaluate wrote"):
        provenance.check(["m/per-image.csv"])


def test_featinv_tables_refuses_a_stale_metrics_file_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _stamped_pipeline(tmp_path)
    (Path("samples.zarr") / provenance.STAMP).unlink()
    (Path("samples.zarr") / "images").write_bytes(b"other pixels")  # made again, outside the pipeline
    cfg = json.dumps({k: yaml.safe_load((REPO / "params.yaml").read_text())[k] for k in ("metrics", "data")})
    code = main(["tables", "--metrics", "m/metrics.json", "--out-dir", "out", "--metrics-json", "out/m.json",
                 "--config", cfg])
    err = capsys.readouterr().err
    assert code == 2 and not Path("out/table1.csv").exists()
    assert "m/metrics.json is stale: its input samples.zarr has changed" in err
    assert "snakemake --cores all out/table1.csv" in err


def test_a_hand_edited_or_truncated_metrics_json_is_refused_naming_it(tmp_path, monkeypatch):
    """An output's own content is part of its stamp: a metrics JSON edited after its job wrote it (a
    number raised), or truncated, is refused by the guard with the file named."""
    monkeypatch.chdir(tmp_path)
    _stamped_pipeline(tmp_path)
    original = Path("m/metrics.json").read_text()
    assert provenance.read_stamp("m/metrics.json")["outputs"]["m/metrics.json"]  # its own content recorded
    doc = json.loads(original)
    doc["cosine_sim"]["mean"] += 0.5
    Path("m/metrics.json").write_text(json.dumps(doc, indent=1))
    with pytest.raises(provenance.StaleError, match=r"m/metrics.json is not the file evaluate wrote \(edited"):
        provenance.check(["m/metrics.json"], target="results/table1.csv")
    Path("m/metrics.json").write_text(original[: len(original) // 2])
    with pytest.raises(provenance.StaleError, match=r"m/metrics.json is not valid JSON"):
        provenance.check(["m/metrics.json"])
    Path("m/metrics.json").write_text(original)
    assert provenance.check(["m/metrics.json", "m/per-image.csv"]) == []


def test_a_sidecar_holds_the_stamp_so_that_dvc_metrics_stay_numbers(tmp_path, monkeypatch):
    """A job with a `*.provenance.json` output (tables) keeps its stamp there alone: results/metrics.json
    holds Table 1's numbers only (`dvc metrics show` lists no hashes), and is still checked, through
    the sidecar, against its content."""
    monkeypatch.chdir(tmp_path)
    _stamped_pipeline(tmp_path)
    Path("r").mkdir()
    Path("r/metrics.json").write_text(json.dumps({"table1": {"a/unpooled": {"cosine_sim": 0.5}}}))
    Path("r/table1.csv").write_text("backbone,cosine_sim\na,0.5\n")
    provenance.stamp("tables", "p3", "c3", ["m/metrics.json"], ["r/metrics.json", "r/table1.csv",
                                                                "r/tables.provenance.json"])
    assert "provenance" not in json.loads(Path("r/metrics.json").read_text())
    sidecar = provenance.read_stamp("r/tables.provenance.json")
    assert set(sidecar["outputs"]) == {"r/metrics.json", "r/table1.csv"} and sidecar["rule"] == "tables"
    assert provenance.check(["r/metrics.json"]) == []
    Path("r/metrics.json").write_text(json.dumps({"table1": {"a/unpooled": {"cosine_sim": 0.9}}}))
    with pytest.raises(provenance.StaleError, match="r/metrics.json is not the file tables wrote"):
        provenance.check(["r/metrics.json"])


def test_editing_the_base_models_card_plans_nothing(built):
    """The shipped base's identity is its weights and configs: its card (and the card's figure) are
    documentation; a config file changed plans the ControlNets' training again."""
    root, jobs = built
    models = root / "models"
    models.unlink()
    shutil.copytree(REPO / "models", models)  # copy2: the modification times are kept
    try:
        card = models / "demo-base" / "README.md"
        card.write_text(card.read_text() + "\nA note.\n")
        (models / "demo-base" / "samples.png").touch()
        assert planned(root) == Counter()
        # The UNet changed (a file replaced, as a copy does): its ControlNets train again, its targets,
        # made by the codec alone, stand.
        unet = models / "demo-base" / "unet" / "config.json"
        unet.with_suffix(".new").write_text(unet.read_text() + "\n")
        unet.with_suffix(".new").replace(unet)
        after_unet = planned(root)
        assert after_unet["train_controlnet"] == sum(j.rule == "train_controlnet" for j in jobs) >= 2
        assert after_unet["encode_targets"] == 0
        codec = models / "demo-base" / "codec.json"
        codec.write_text(codec.read_text() + "\n")  # Snakemake 9 compares a touched small file's content
        again = planned(root)
        assert again["train_controlnet"] == sum(j.rule == "train_controlnet" for j in jobs) >= 2
        assert again["encode_targets"] == sum(j.rule == "encode_targets" for j in jobs) >= 1  # the codec's config
    finally:
        shutil.rmtree(models)
        models.symlink_to(REPO / "models")
