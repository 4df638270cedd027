"""One registry of verbs: the CLI parser, the rules' --config sections and the multi-process verbs
all come from the stage packages' declarations (featinv.verbs)."""

import json
import sys
from pathlib import Path

import pytest
import yaml

from featinv.cli import VERBS, build_parser, main
from featinv.dvcyaml import job_command, snakemake_jobs

REPO = Path(__file__).resolve().parents[1]


def test_the_parser_offers_exactly_the_declared_verbs_under_their_dashed_names():
    sub = next(a for a in build_parser()._actions if a.dest == "verb")
    assert list(sub.choices) == [v.command for v in VERBS.values()]
    assert VERBS["extract_features"].command == "extract-features"
    assert all(name.isidentifier() and v.run.__name__ == name for name, v in VERBS.items())
    # declared where their stage lives
    assert VERBS["train_modular"].run.__module__ == "featinv.modular.verbs"
    assert VERBS["concepts_figure"].run.__module__ == "featinv.applications.verbs"


def test_declared_sections_are_params_sections_and_only_verbs_with_sections_take_config():
    schema = yaml.safe_load((REPO / "workflow/schemas/params.schema.yaml").read_text())
    for v in VERBS.values():
        assert set(v.sections) <= set(schema["properties"]), v.name
    sub = next(a for a in build_parser()._actions if a.dest == "verb")
    takes_config = {name for name, p in sub.choices.items() if any(a.dest == "config" for a in p._actions)}
    assert takes_config == {v.command for v in VERBS.values() if v.sections}
    assert VERBS["evaluate"].sections == ("metrics", "backbones")


def test_the_verbs_that_split_their_work_are_declared_so():
    # (tests/test_distributed.py runs one that does not, under --processes 2)
    assert {n for n, v in VERBS.items() if v.processes} == {"extract_features", "train_base", "train_controlnet", "sample",
                                                            "train_inverse"}


def test_a_verb_gets_its_sections_validated_and_a_missing_one_is_named(capsys):
    assert main(["tables", "--metrics", "m.json", "--out-dir", "x", "--metrics-json", "y",
                 "--config", json.dumps({"metrics": {}})]) == 2
    assert "featinv tables: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a verb without sections has no --config
        build_parser().parse_args(["plot-losses", "--csv", "a.csv", "--out", "b.png", "--config", "{}"])


def test_a_name_not_found_is_one_line_and_an_unexpected_key_error_keeps_its_traceback(monkeypatch, capsys):
    from featinv import config

    argv = ["tables", "--metrics", "m.json", "--out-dir", "x", "--metrics-json", "y", "--config", "{}"]

    def missing_split(*_):
        raise config.NameNotFound("split 'test' not in m.json (has ['val'])")

    monkeypatch.setattr(config, "sections", missing_split)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == "featinv tables: error: split 'test' not in m.json (has ['val'])"

    def bug(*_):
        return {}["features"]

    monkeypatch.setattr(config, "sections", bug)
    with pytest.raises(KeyError, match="features"):
        main(argv)


def test_each_rule_passes_exactly_its_verbs_sections_from_params():
    """Every job of `all` (Snakemake's own DAG, forced), its command read by featinv's parser."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    seen = set()
    for job in snakemake_jobs(REPO):
        args = job_command(job)
        verb = VERBS[job.rule]
        if not verb.sections:
            continue
        assert list(args.config) == sorted(verb.sections), job.rule
        assert all(args.config[name] == params[name] for name in verb.sections), job.rule
        seen.add(verb.name)
    assert {"build_shards", "extract_features", "train_controlnet", "sample", "evaluate", "tables",
            "train_modular", "modular_colour", "composition_figure"} <= seen


def test_the_validate_verb_names_a_mistyped_key(tmp_path, capsys):
    assert main(["validate", str(REPO / "params.yaml")]) == 0
    typo = tmp_path / "typo.yaml"
    typo.write_text("sampling:\n  stpes: 3\n")
    assert main(["validate", str(REPO / "params.yaml"), str(typo)]) == 2
    assert "sampling.stpes: unknown key" in capsys.readouterr().err
