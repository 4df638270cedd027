"""dvc.yaml's code dependencies are the source files each stage's verb imports (featinv.codedeps)."""

from pathlib import Path

from featinv.codedeps import rule_code, verb_modules, with_code_deps

REPO = Path(__file__).resolve().parents[1]


def test_dvc_yaml_names_exactly_the_code_each_stage_runs():
    committed = (REPO / "dvc.yaml").read_text()
    assert committed == with_code_deps(committed, rule_code(REPO)), "run `python -m featinv.codedeps` and commit dvc.yaml"


def test_a_verb_depends_on_what_it_imports_and_not_on_other_verbs_code():
    tables = verb_modules("tables")
    assert {"featinv.cli", "featinv.metrics.tables", "featinv.fileio", "featinv.features.store", "featinv.rowstore"} <= tables
    assert not any(m.startswith(("featinv.diffusion", "featinv.modular", "featinv.backbones")) for m in tables)
    extract = verb_modules("extract")
    assert {"featinv.features.extract", "featinv.data.shards", "featinv.data.batches", "featinv.backbones.registry",
            "featinv.rowstore"} <= extract
    assert "featinv.diffusion.base" not in extract
    assert "featinv.modular.colour" in verb_modules("modular-colour")  # imported by name at run time


def test_code_deps_replace_a_stages_src_lines_in_place_or_join_its_deps():
    text = ("stages:\n  first:\n    cmd: x\n    deps:\n      - data/a\n    outs:\n      - o\n"
            "  second:\n    deps:\n      - src/featinv/old.py\n      - workflow/rules/data.smk\n")
    code = {"first": ["src/featinv/new.py"], "second": ["src/featinv/a.py", "src/featinv/b.py"]}
    assert with_code_deps(text, code) == (
        "stages:\n  first:\n    cmd: x\n    deps:\n      - data/a\n      - src/featinv/new.py\n    outs:\n      - o\n"
        "  second:\n    deps:\n      - src/featinv/a.py\n      - src/featinv/b.py\n      - workflow/rules/data.smk\n")
