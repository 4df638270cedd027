"""The code each pipeline rule runs, for dvc.yaml's code dependencies: the `featinv` verb in the
rule's shell command, the CLI entry it goes through, and every project module the verb imports,
transitively (import-linter's graph, grimp), as source files."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SHELL = re.compile(r"Shell command: featinv (?:--threads \d+ )?(?:--processes \d+ )?([a-z][a-z-]+) ")
LOG = re.compile(r"> results/logs/(\w+)[/.]")


def rule_verbs(workdir: str | Path) -> dict[str, set[str]]:
    """Rule -> the verbs its jobs run, read from Snakemake's dry run of every job of ``all``."""
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "--cores", "1", "all"],
                         cwd=workdir, capture_output=True, text=True, check=True).stdout
    verbs: dict[str, set[str]] = {}
    for line in out.splitlines():
        verb, rule = SHELL.search(line), LOG.search(line)
        if verb and rule:
            verbs.setdefault(rule.group(1), set()).add(verb.group(1))
    return verbs


@lru_cache(maxsize=1)
def _graph():
    import grimp

    return grimp.build_graph("featinv", cache_dir=None)


@lru_cache(maxsize=1)
def _cli_tree() -> ast.Module:
    return ast.parse((PACKAGE / "cli.py").read_text())


def _cli_functions() -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in _cli_tree().body if isinstance(n, ast.FunctionDef)}


def _imports(node: ast.AST, functions: dict[str, ast.FunctionDef], seen: set[str]) -> set[str]:
    """Project modules imported inside ``node`` and the cli.py functions it calls."""
    graph = _graph()
    found = set()
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "featinv":
            for alias in n.names:
                sub = f"{n.module}.{alias.name}"
                found.add(sub if sub in graph.modules else n.module)
        elif isinstance(n, ast.Import):
            found |= {a.name for a in n.names if a.name.split(".")[0] == "featinv"}
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in functions:
            if n.func.id not in seen:
                seen.add(n.func.id)
                found |= _imports(functions[n.func.id], functions, seen)
    return found


def verb_modules(verb: str) -> set[str]:
    """Every project module ``featinv <verb>`` runs: cli.py's own imports and main(), the verb's
    function, what they import, transitively."""
    from featinv.cli import ANALYSES, build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "verb")
    functions = _cli_functions()
    top = [n for n in _cli_tree().body if isinstance(n, (ast.Import, ast.ImportFrom))]
    roots = {"featinv"} | set().union(*(_imports(n, functions, set()) for n in top))
    roots |= _imports(functions["main"], functions, {"main"})
    func = sub.choices[verb].get_default("func").__name__
    roots |= _imports(functions[func], functions, {func})
    if verb in ANALYSES:  # imported by name at run time
        roots.add(ANALYSES[verb][0])
    graph = _graph()
    # cli.py itself, but not every module its other verbs import (grimp's view of cli.py).
    return {"featinv.cli"} | roots.union(*(graph.find_upstream_modules(m) for m in roots))


def module_file(module: str) -> str:
    """``featinv.data.shards`` -> ``src/featinv/data/shards.py`` (a package: its ``__init__.py``)."""
    path = PACKAGE.parent / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return path.relative_to(PACKAGE.parent.parent).as_posix()


def rule_code(workdir: str | Path) -> dict[str, list[str]]:
    """Rule -> the source files its verbs run, sorted."""
    return {rule: sorted({module_file(m) for verb in verbs for m in verb_modules(verb)})
            for rule, verbs in rule_verbs(workdir).items()}


def with_code_deps(dvc_yaml: str, code: dict[str, list[str]]) -> str:
    """``dvc.yaml``'s text with each stage's ``src/`` deps replaced by ``code[stage]`` (stages are
    named after their rules), where the first of them was, else at the end of its deps; every other
    line unchanged."""
    out: list[str] = []
    stage, in_deps, written = None, False, False

    def close_deps() -> None:
        if in_deps and not written and stage in code:
            out.extend(f"      - {path}" for path in code[stage])

    for line in dvc_yaml.splitlines():
        if re.fullmatch(r"  [a-z0-9_]+:", line) or re.fullmatch(r"    [a-z_]+:.*", line):
            close_deps()
            in_deps = line == "    deps:"
            if not line.startswith("    "):
                stage, written = line.strip().rstrip(":"), False
        elif in_deps and line.startswith("      - src/"):
            if not written:
                out.extend(f"      - {path}" for path in code[stage])
                written = True
            continue
        out.append(line)
    close_deps()
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # python -m featinv.codedeps: rewrite dvc.yaml's code dependencies
    root = PACKAGE.parent.parent
    target = root / "dvc.yaml"
    target.write_text(with_code_deps(target.read_text(), rule_code(root)))
