"""``pipeblocks show NAME -p P -m M [--stages-per-rank V]``: the ASCII grid of a schedule."""

from __future__ import annotations

import argparse

from pipeblocks.cli.common import add_spec_args
from pipeblocks.generators import generate
from pipeblocks.ir import validate


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("show", help="print a schedule as an ASCII grid",
                       description="Print a generated schedule, one row per rank (program order).")
    add_spec_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    schedule = generate(args.name, args.p, args.m, args.v)
    validate(schedule)
    print(f"# {schedule.name}  {schedule.spec.describe()}")
    print(schedule)
    return 0
