"""``pipeblocks compare -p P -m M``: every generator that accepts (p, m), side by side.

    $ pipeblocks compare -p 4 -m 8
    $ pipeblocks compare -p 8 -m 32 --cost f=1,b=2,w=1,comm=0.1 --json

Columns: the closed-form bubble rate where one exists (uniform costs, no transfer cost:
:mod:`pipeblocks.sim.formulas`), the simulated bubble rate (papers' metric and global), the peak
as a fraction of 1F1B's, the makespan and the P2P volume (cross-rank transfers per step).
Rows are sorted by bubble rate, then peak; the generators that do not accept (p, m) follow,
each with its reason. A per-stage costs file fits the generators with its number of stages
(e.g. 2p entries: the two-chunk ones); the others are listed as not applicable, and a costs
file that fits none is an error.
"""

from __future__ import annotations

import argparse
from typing import Any

from pipeblocks.cli.common import emit_json, positive_int
from pipeblocks.cli.simulate import add_costs_args, build_costs
from pipeblocks.errors import SpecError
from pipeblocks.generators import generators
from pipeblocks.ir import validate
from pipeblocks.ir.lowering import transfers
from pipeblocks.sim import CostModel, UniformCosts, simulate
from pipeblocks.sim.costs import describe_costs
from pipeblocks.sim.formulas import bubble_rate_formula

__all__ = ["register", "run", "compare"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "compare", help="simulate every schedule for one (p, m) side by side",
        description="Generate, validate and simulate every registered schedule that accepts "
        "(p, m); print closed-form and simulated bubbles, peak memory and P2P volume.")
    p.add_argument("-p", "--ranks", dest="p", type=positive_int, required=True,
                   help="number of pipeline ranks (devices)")
    p.add_argument("-m", "--microbatches", dest="m", type=positive_int, required=True,
                   help="number of microbatches per step")
    add_costs_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _formula_costs(costs: CostModel) -> UniformCosts | None:
    """The uniform costs the closed forms take, or None if the forms do not apply."""
    if isinstance(costs, UniformCosts) and costs.comm == 0:
        return costs
    return None


def compare(p: int, m: int, costs: CostModel) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Rows for the generators that accept (p, m), sorted; and the others with their reason."""
    uniform = _formula_costs(costs)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    cost_errors: list[SpecError] = []
    for gen in generators():
        try:
            schedule = gen(gen.spec(p, m))
        except SpecError as e:
            skipped.append({"name": gen.name, "reason": str(e)})
            continue
        validate(schedule)
        try:
            sim = simulate(schedule, costs, validate=False)
        except SpecError as e:  # e.g. a per-stage costs file made for another stage count
            cost_errors.append(e)
            skipped.append({"name": gen.name, "reason": f"the costs do not fit it: {e}"})
            continue
        formula = None
        if uniform is not None:
            formula = bubble_rate_formula(gen.name, schedule.spec, f=uniform.f, b=uniform.b,
                                          w=uniform.w)
        rows.append({
            "name": gen.name,
            "stages_per_rank": schedule.spec.stages_per_rank,
            "placement": schedule.spec.placement.value,
            "formula_bubble_rate": formula,
            "bubble_rate": sim.bubble_rate,
            "bubble_rate_global": sim.bubble_rate_global,
            "peak_fraction": sim.peak_fraction,
            "makespan": sim.makespan,
            "p2p_transfers": transfers(schedule),
        })
    if cost_errors and not rows:  # the costs fit no schedule at all: that is the error
        raise cost_errors[0]
    rows.sort(key=lambda r: (round(r["bubble_rate"], 12), round(r["peak_fraction"], 12),
                             r["name"]))
    return rows, skipped


def run(args: argparse.Namespace) -> int:
    costs = build_costs(args)
    rows, skipped = compare(args.p, args.m, costs)
    if args.json:
        emit_json({"num_ranks": args.p, "num_microbatches": args.m,
                   "costs": describe_costs(costs), "schedules": rows,
                   "not_applicable": skipped})
        return 0
    print(f"# p={args.p} m={args.m}  costs: {describe_costs(costs)}  bubble: papers' metric "
          f"(max span vs busy) and global (all ranks 0..makespan); peak: fraction of 1F1B's")
    head = (f"{'schedule':<18} {'v':>2} {'formula':>8} {'bubble':>8} {'global':>8} "
            f"{'peak':>6} {'makespan':>10} {'p2p':>7}")
    print(head)
    print("-" * len(head))
    for r in rows:
        formula = "-" if r["formula_bubble_rate"] is None else f"{r['formula_bubble_rate']:.4f}"
        print(f"{r['name']:<18} {r['stages_per_rank']:>2} {formula:>8} {r['bubble_rate']:>8.4f} "
              f"{r['bubble_rate_global']:>8.4f} {r['peak_fraction']:>6.3f} "
              f"{r['makespan']:>10.5g} {r['p2p_transfers']:>7}")
    if skipped:
        print("not applicable:")
        for s in skipped:
            print(f"  {s['name']}: {s['reason']}")
    return 0
