"""``pipeblocks pareto``: the best schedule at every memory budget, named schedules marked.

    $ pipeblocks pareto -p 8 -m 32
    $ pipeblocks pareto -p 8 -m 32 --cost f=3,b=4,w=2,comm=0.5 -o pareto.png
    $ pipeblocks pareto -p 8 -m 32 --family v --json

Budgets run from the smallest feasible one to ``--top`` (2 x 1F1B's peak by default) in steps
of 1/(2p). Each row gives the best schedule found within the budget; rows marked ``*`` are the
named generators at their own peak. ``-o FILE`` draws every candidate simulated, the front and
the named schedules (.png, .svg or .pdf).
"""

from __future__ import annotations

import argparse
import time

from pipeblocks.checks import require
from pipeblocks.cli.common import check_output, emit_json, finite_float
from pipeblocks.cli.search import add_search_args, bar_for
from pipeblocks.cli.simulate import build_costs
from pipeblocks.search.pareto import pareto
from pipeblocks.sim.costs import describe_costs

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "pareto", help="best schedule at every memory budget (the trade-off)",
        description="Search the best schedule for every budget from the smallest feasible one "
        "to --top x 1F1B's peak; list them with the named generators marked.")
    add_search_args(p)
    p.add_argument("--top", metavar="FRACTION", type=finite_float(0.0, strict=True), default=2.0,
                   help="largest budget, as a fraction of 1F1B's peak (default 2)")
    p.add_argument("-o", "--output", metavar="FILE", default=None,
                   help="draw the trade-off to FILE (.png, .svg or .pdf)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.output:  # checked before the search: no minutes of work that cannot be drawn
        require("matplotlib", "pipeblocks pareto -o")
        check_output(args.output)
    costs = build_costs(args)
    bar = bar_for(args, "pareto")
    t0 = time.perf_counter()
    try:
        front = pareto(args.p, args.m, costs, args.family, top=args.top, named=args.named,
                       progress=bar, recompute=args.recompute)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    if args.output:
        from pipeblocks.visual.pareto import plot_pareto  # lazily: matplotlib is optional

        best = [(pt.result.peak_fraction, pt.result.bubble_rate) for pt in front.points]
        named = {n.name: (n.peak_fraction, n.bubble_rate) for n in front.named}
        plot_pareto([*front.candidates, *best], named, args.output,
                    title=f"p={args.p} m={args.m}: best bubble per memory budget")
    if args.json:
        out = {"costs": describe_costs(costs), **front.summary()}
        out["seconds"] = round(seconds, 3)
        if args.output:
            out["output"] = args.output
        emit_json(out)
        return 0
    print(f"# pareto p={args.p} m={args.m} family={args.family}: memory = budget (search "
          f"rows) or own peak (* named), as a fraction of 1F1B's peak; bubble: papers' metric")
    print(f"# costs: {describe_costs(costs)}")
    head = f"{'memory':>8} {'peak':>7} {'bubble':>8} {'makespan':>10}  schedule"
    print(head)
    print("-" * (len(head) + 30))
    rows = [(pt.budget, 1, pt.result.peak_fraction, pt.result.bubble_rate, pt.result.makespan,
             f"  {pt.result.schedule.name}") for pt in front.points]
    rows += [(n.peak_fraction, 0, n.peak_fraction, n.bubble_rate, n.makespan, f"* {n.name}")
             for n in front.named]
    for mem, _, peak, bubble, makespan, name in sorted(rows):
        print(f"{mem:>8.4f} {peak:>7.4f} {bubble:>8.4f} {makespan:>10.5g} {name}")
    print(f"# {len(front.points)} budgets, {len(front.candidates)} candidates simulated in "
          f"{seconds:.2f} s")
    if args.output:
        print(f"# drawn to {args.output}")
    return 0
