"""``featinv <verb>``: the one entry point every Snakemake rule calls, usable by hand with the same
arguments. The verbs are those the stage packages declare (``featinv.verbs``); params sections arrive
as one JSON object (``--config``) and are validated against the schema."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from featinv import config as params
from featinv.applications import verbs as applications
from featinv.data import verbs as data
from featinv.diffusion import verbs as diffusion
from featinv.features import verbs as features
from featinv.metrics import verbs as metrics
from featinv.modular import verbs as modular
from featinv.verbs import Arg, Verb, verb, verbs_of


@verb("validate params files (later files overlay earlier ones)", args=(Arg("params", nargs="+"),))
def validate(args, cfg) -> None:
    params.load(*args.params)
    print(f"ok: {' + '.join(args.params)}")


@verb("after `dvc pull` / `dvc checkout`: once `dvc status` confirms that the restored outputs are what "
      "dvc.lock records, mark their jobs done for Snakemake (outputs touched in DAG order, params and code "
      "recorded), so that `snakemake -n` has nothing to do and later params changes still propagate", args=(
    Arg("targets", "Snakemake targets (default: the default target, `all`)", nargs="*"),
    Arg("--configfile", "params overlays, as for snakemake", nargs="*", default=[])))
def sync(args, cfg) -> None:
    from featinv.restore import sync as mark

    mark(args.targets, args.configfile)
    print("ok: Snakemake's records now match the outputs DVC restored")


# Every verb, by name (= Snakemake rule), in pipeline order.
VERBS: dict[str, Verb] = {v.name: v for v in [validate, sync] + [
    v for module in (data, features, diffusion, metrics, modular, applications) for v in verbs_of(module)]}


def _json_arg(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featinv", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    multi = ", ".join(v.command for v in VERBS.values() if v.processes)
    parser.add_argument("--processes", type=int, default=1,
                        help=f"run as N processes under `accelerate launch` (one per GPU; gloo on CPU): {multi} "
                             "split their work; 0 or 1 = one process")
    parser.add_argument("--stamp", type=_json_arg, default=None,
                        help="the pipeline's provenance of this job as JSON (rule, params, code, inputs, outputs): "
                             "recorded in its outputs once the verb succeeds (featinv.provenance)")
    sub = parser.add_subparsers(dest="verb", required=True)
    for v in VERBS.values():
        p = sub.add_parser(v.command, help=v.help)
        if v.sections:
            p.add_argument("--config", type=_json_arg, required=True,
                           help=f"params sections {', '.join(v.sections)} as one JSON object")
        for arg in v.args:
            arg.add_to(p)
        p.set_defaults(verb_=v)
    return parser


def _relaunch(args, argv: list[str]) -> int:
    """Rerun this command as ``args.processes`` processes (without ``--processes``)."""
    import subprocess

    from featinv.distributed import launch_command

    if not args.verb_.processes:
        multi = ", ".join(v.command for v in VERBS.values() if v.processes)
        print(f"featinv {args.verb}: error: --processes {args.processes}: only {multi} "
              "split their work across processes", file=sys.stderr)
        return 2
    # global options precede the verb: keep them, without --processes
    rest = (["-v"] if args.verbose else []) + ["--threads", str(args.threads)] + argv[argv.index(args.verb):]
    return subprocess.call(launch_command(args.processes, rest))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    from featinv.distributed import launched

    if args.processes > 1 and not launched():
        code = _relaunch(args, argv)
        return _stamp(args) if code == 0 else code
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from featinv.allocator import keep_freed_memory

    logging.getLogger(__name__).debug("allocator: %s", keep_freed_memory())
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        v = args.verb_
        v(args, params.sections(args.config if v.sections else {}, *v.sections))
    except (params.ParamsError, params.NameNotFound, FileNotFoundError, ValueError) as exc:
        print(f"featinv {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    return 0 if launched() else _stamp(args)


def _stamp(args) -> int:
    """Record the job's provenance (``--stamp``) in its outputs, once, after the verb succeeded."""
    if args.stamp:
        from featinv.provenance import stamp

        s = args.stamp
        stamp(s["rule"], s["params"], s["code"], s["inputs"], s["outputs"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
