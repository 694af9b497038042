"""``pipeblocks export NAME -p P -m M --format F [-o FILE]``: write a schedule to a file.

Formats: ``torch-csv`` (PyTorch's compute-only CSV, its letters F, I, W, B), ``json`` (our
schema, see docs/formats.md), ``ascii`` (the grid ``show`` prints) and ``chrome-trace`` (the
simulated timeline for ui.perfetto.dev; ``--cost`` sets the pass times). Without ``-o`` the
text goes to stdout.

    $ pipeblocks export 1f1b -p 4 -m 8 --format torch-csv -o 1f1b.csv
    $ pipeblocks export zb-v -p 4 -m 8 --format chrome-trace --cost f=1,b=1,w=1 -o zb-v.json
"""

from __future__ import annotations

import argparse
import json
import sys

from pipeblocks.cli.common import (
    add_cost_args,
    add_spec_args,
    check_output,
    cost_of,
    write_output,
)
from pipeblocks.errors import PipeblocksError, SpecError
from pipeblocks.generators import generate
from pipeblocks.ir import Schedule, validate
from pipeblocks.ir.formats import dumps
from pipeblocks.sim.costs import CostModel

__all__ = ["register", "run", "FORMATS"]

FORMATS = ("torch-csv", "json", "ascii", "chrome-trace")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "export", help="write a schedule as PyTorch CSV, JSON, ASCII or a Chrome trace",
        description="Generate a schedule and write it in a file format: torch-csv (PyTorch's "
        "compute-only CSV; its letters I = our B, B = our BW), json (pipeblocks schema), ascii "
        "(the grid), chrome-trace (the simulated timeline; open in ui.perfetto.dev).",
        epilog="example: pipeblocks export zb-h1 -p 4 -m 8 --format torch-csv -o zb-h1.csv",
    )
    add_spec_args(p)
    p.add_argument("--format", "-f", dest="format", choices=FORMATS, required=True,
                   help="file format")
    p.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="write here instead of stdout")
    add_cost_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    flag = "--cost" if args.cost is not None else "--stage-cost"
    if (args.cost is not None or args.stage_cost is not None) and args.format != "chrome-trace":
        raise SpecError(f"{flag} only applies to --format chrome-trace (got --format "
                        f"{args.format}); drop {flag}")
    costs = cost_of(args)  # checked before generating: a bad --cost fails fast
    if args.output is not None:
        check_output(args.output)
    schedule = generate(args.name, args.p, args.m, args.v)
    validate(schedule)
    text = _chrome_trace(schedule, costs) if args.format == "chrome-trace" else dumps(
        schedule, args.format)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    write_output(args.output, text)
    print(f"wrote {args.output} ({args.format}, {schedule.name} {schedule.spec.describe()}, "
          f"{schedule.num_actions} actions)")
    return 0


def _chrome_trace(schedule: Schedule, costs: CostModel) -> str:
    # Imported here: the trace writer is optional for the other formats.
    try:
        from pipeblocks.visual.trace import chrome_trace
    except ImportError as e:
        raise PipeblocksError(f"--format chrome-trace needs pipeblocks.visual.trace, which "
                              f"cannot be imported here ({e}); export torch-csv, json or ascii "
                              f"instead") from None
    from pipeblocks.sim import simulate

    return json.dumps(chrome_trace(simulate(schedule, costs, validate=False))) + "\n"
