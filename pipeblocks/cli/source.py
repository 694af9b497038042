"""Where a command's schedule comes from: ``NAME -p P -m M [--stages-per-rank V]`` (a
generator) or ``--schedule FILE`` (PyTorch CSV or pipeblocks JSON), with the same rules in
every command that takes one (``simulate``, ``draw``).

A PyTorch CSV stores neither the placement nor v (nor microbatches that no rank runs), so with
a CSV ``--placement``, ``--stages-per-rank`` and ``-m`` say them; a JSON file states its whole
spec, and a flag that disagrees with a file is refused, naming both values.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeblocks.cli.common import add_spec_args
from pipeblocks.errors import SpecError
from pipeblocks.generators import generate
from pipeblocks.ir import Schedule

__all__ = ["add_source_args", "schedule_from_args", "load_file"]


def add_source_args(parser: argparse.ArgumentParser, *, verb: str) -> None:
    """NAME, --schedule FILE, -p, -m, --stages-per-rank, --placement (``verb``: the help's)."""
    parser.add_argument("name", metavar="NAME", nargs="?", default=None,
                        help="generator name (see `pipeblocks list`)")
    parser.add_argument("--schedule", metavar="FILE", default=None,
                        help=f"{verb} a schedule file (PyTorch CSV or pipeblocks JSON) instead "
                        f"of NAME")
    add_spec_args(parser, name=False, required=False)
    parser.add_argument("--placement", choices=("loop", "v"), default=None,
                        help="with --schedule FILE.csv: the stage placement, which PyTorch "
                        "CSVs do not store")


def load_file(args: argparse.Namespace) -> Schedule:
    """The schedule in ``--schedule FILE``, with the CSV-only options checked."""
    from pipeblocks.ir.formats import detect, load  # lazily: only this path needs the readers

    options: dict[str, Any] = {}
    if detect(None, args.schedule) == "torch-csv":
        given = (("placement", args.placement), ("stages_per_rank", args.v),
                 ("num_microbatches", args.m))
        options = {k: v for k, v in given if v is not None}
    elif args.placement is not None:
        raise SpecError(f"--placement only applies to PyTorch CSV files; {args.schedule} sets "
                        f"its own")
    schedule = load(Path(args.schedule), **options)  # a path, never the text itself
    spec = schedule.spec
    for flag, given, actual in (("-p", args.p, spec.num_ranks),
                                ("-m", args.m, spec.num_microbatches),
                                ("--stages-per-rank", args.v, spec.stages_per_rank)):
        if given is not None and given != actual:
            raise SpecError(f"{flag} {given} disagrees with {args.schedule} ({flag} {actual}); "
                            f"drop {flag}, the file sets it")
    return schedule


def schedule_from_args(args: argparse.Namespace, command: str) -> Schedule:
    """The generated or loaded schedule (not yet validated); one clear error otherwise."""
    if args.schedule:
        if args.name:
            raise SpecError(f"{command} takes NAME or --schedule FILE, not both (got "
                            f"{args.name!r} and {args.schedule})")
        return load_file(args)
    if args.placement is not None:
        raise SpecError("--placement only applies to --schedule FILE.csv; a generator sets its "
                        "own")
    if not args.name:
        raise SpecError(f"{command} needs NAME -p P -m M, or --schedule FILE")
    if args.p is None or args.m is None:
        missing = " and ".join(f for f, v in (("-p", args.p), ("-m", args.m)) if v is None)
        raise SpecError(f"{command} NAME needs {missing}; e.g. {command} {args.name} -p 4 -m 8")
    return generate(args.name, args.p, args.m, args.v)
