"""The code each pipeline rule runs, for dvc.yaml's code dependencies: the `featinv` verb of the
rule's name, the CLI entry it goes through, and every project module the verb imports, transitively
(import-linter's graph, grimp), as source files. The same set feeds dvc.yaml's code deps and the code
hash each rule passes Snakemake as a param (``rule_code_hash``)."""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
@lru_cache(maxsize=1)
def _graph():
    import grimp

    return grimp.build_graph("featinv", cache_dir=None)


@lru_cache(maxsize=None)
def _tree(module: str) -> ast.Module:
    return ast.parse((PACKAGE.parent.parent / module_file(module)).read_text())


def _functions(module: str) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in _tree(module).body if isinstance(n, ast.FunctionDef)}


def _top_imports(module: str) -> list[ast.AST]:
    return [n for n in _tree(module).body if isinstance(n, (ast.Import, ast.ImportFrom))]


def _imports(node: ast.AST, functions: dict[str, ast.FunctionDef], seen: set[str]) -> set[str]:
    """Project modules imported inside ``node`` and the same module's functions it calls."""
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


def _declarations(module: str) -> bool:
    """A stage package's verbs module: it only declares verbs at import time (its imports are lazy)."""
    return module.endswith(".verbs") and module != "featinv.verbs"


def verb_modules(name: str) -> set[str]:
    """Every project module ``featinv <verb>`` runs: cli.py's own imports and main(), the verb's
    function and the helpers it calls in its verbs module, what they import, transitively. The other
    verbs modules cli.py imports only declare their verbs; their lazy imports do not count."""
    from featinv.cli import VERBS

    module = VERBS[name].run.__module__
    cli = "featinv.cli"
    cli_functions = _functions(cli)
    roots = {"featinv"} | {m for n in _top_imports(cli) for m in _imports(n, cli_functions, set())
                           if not _declarations(m)}
    roots |= _imports(cli_functions["main"], cli_functions, {"main"})
    functions = _functions(module)
    if module != cli:
        roots |= set().union(*(_imports(n, functions, set()) for n in _top_imports(module)))
    verb = VERBS[name]
    top = verb.run.__qualname__.split(".")[0]  # the verb's function, or the one that declared it from a table
    roots |= _imports(functions[top], functions, {top})
    if verb.runs:
        roots.add(verb.runs.split(":")[0])
    graph = _graph()
    return {cli, module} | roots.union(*(graph.find_upstream_modules(m) for m in roots))


def module_file(module: str) -> str:
    """``featinv.data.shards`` -> ``src/featinv/data/shards.py`` (a package: its ``__init__.py``)."""
    path = PACKAGE.parent / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return path.relative_to(PACKAGE.parent.parent).as_posix()


@lru_cache(maxsize=1)
def rule_code() -> dict[str, list[str]]:
    """Rule (= verb) -> the source files its verb runs, sorted."""
    from featinv.cli import VERBS

    return {name: sorted(module_file(m) for m in verb_modules(name)) for name in VERBS}


@lru_cache(maxsize=None)
def rule_code_hash(rule: str) -> str:
    """A short hash of the source files ``rule``'s verb runs: a rule param, so that Snakemake reruns
    the rule (and what reads its outputs) when that code changes, as DVC does."""
    from featinv.provenance import code_hash

    return code_hash(rule_code()[rule], root=PACKAGE.parent.parent)
