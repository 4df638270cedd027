"""Verbs: the units of work the CLI and the pipeline share. Each stage package declares its own in
``<package>/verbs.py`` with ``@verb``, once: the function's name is the verb (``train_base`` is
``featinv train-base`` and Snakemake rule ``train_base``), and the declaration names the params
sections it reads and its arguments. ``featinv.cli`` builds its parser from them; the rule files
pass each rule the sections its verb declares."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Arg:
    """One command-line option of a verb (``argparse.add_argument``'s keywords)."""

    flag: str
    help: str = ""
    required: bool = False
    default: Any = None
    type: Callable[[str], Any] | None = None
    nargs: str | None = None
    choices: tuple[str, ...] | None = None

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        kwargs = {"help": self.help, "default": self.default, "type": self.type, "nargs": self.nargs,
                  "choices": self.choices}
        if self.flag.startswith("-"):
            kwargs["required"] = self.required
        parser.add_argument(self.flag, **{k: v for k, v in kwargs.items() if v is not None or k == "default"})


@dataclass(frozen=True)
class Verb:
    """A verb: ``run(args, cfg)`` with ``cfg`` the params ``sections`` it reads (``--config``), validated
    and typed by ``featinv.config.sections``: ``cfg.controlnet.train.steps``."""

    name: str
    run: Callable[[argparse.Namespace, Any], None]
    help: str
    sections: tuple[str, ...] = ()
    args: tuple[Arg, ...] = ()
    processes: bool = False  # splits its work across processes (``featinv --processes N``)
    runs: str = ""  # a verb declared from a table: the ``module:function`` its run imports when it runs

    @property
    def command(self) -> str:
        """The CLI spelling: ``train_base`` -> ``train-base``."""
        return self.name.replace("_", "-")

    def __call__(self, args: argparse.Namespace, cfg: Any) -> None:
        self.run(args, cfg)


def verb(help: str, sections: tuple[str, ...] = (), args: tuple[Arg, ...] = (),
         processes: bool = False) -> Callable[[Callable], Verb]:
    """Declare the decorated function ``f(args, cfg)`` as verb ``f.__name__``."""

    def declare(func: Callable) -> Verb:
        return Verb(func.__name__, func, help, tuple(sections), tuple(args), processes)

    return declare


def verbs_of(module) -> list[Verb]:
    """The verbs a module declares, in the order they are defined."""
    return [v for v in vars(module).values() if isinstance(v, Verb)]
