"""``pipeblocks show NAME -p P -m M [--stages-per-rank V] [--timed [--cost ...] [--width N]]``.

Without ``--timed``: the ASCII grid of a schedule, one column per program position. With it:
the simulated timeline on a true time axis scaled to the terminal (or ``--width``), idle time
as ``.`` (see :mod:`pipeblocks.visual.ascii_timed` for the letters), under the cost options of
``pipeblocks simulate`` (``--cost``, ``--costs FILE``, ...).
"""

from __future__ import annotations

import argparse

from pipeblocks.cli.common import add_spec_args, positive_int
from pipeblocks.cli.simulate import add_costs_args, build_costs
from pipeblocks.errors import SpecError
from pipeblocks.generators import generate
from pipeblocks.ir import validate


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("show", help="print a schedule as an ASCII grid",
                       description="Print a generated schedule, one row per rank (program order), "
                       "or with --timed its simulated timeline scaled to the terminal.")
    add_spec_args(p)
    p.add_argument("--timed", action="store_true",
                   help="simulate and print on a true time axis ('.' is idle; F/B/W/X passes, "
                   "lower case for odd chunks)")
    add_costs_args(p)  # with --timed: --cost, --costs FILE, --model, --machine, --memory-model
    p.add_argument("--width", type=positive_int, default=None, metavar="N",
                   help="with --timed: line width in characters (default: the terminal's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    given = [f for f, v in (("--cost", args.cost), ("--stage-cost", args.stage_cost),
                            ("--costs", args.costs), ("--model", args.model),
                            ("--machine", args.machine), ("--memory-model", args.memory_model),
                            ("--width", args.width)) if v is not None]
    if given and not args.timed:
        raise SpecError(f"{' and '.join(given)} only apply to the timed view; add --timed")
    schedule = generate(args.name, args.p, args.m, args.v)
    validate(schedule)
    if args.timed:
        from pipeblocks.sim import describe_costs, simulate
        from pipeblocks.visual.ascii_timed import timed_ascii

        costs = build_costs(args)
        print(f"# costs: {describe_costs(costs)}")
        print(timed_ascii(simulate(schedule, costs, validate=False), args.width))
        return 0
    print(f"# {schedule.name}  {schedule.spec.describe()}")
    print(schedule)
    return 0
