"""``--fill``: the bubble-filling options of ``pipeblocks simulate`` and ``pipeblocks train``
(see docs/fill.md).

    $ pipeblocks simulate 1f1b -p 4 -m 8 --fill 0.25x100
    $ pipeblocks simulate v-min -p 4 -m 8 --fill 0.5x40@0.1 --fill-picture fill.png --json
    $ pipeblocks train --schedule 1f1b --ranks 4 --microbatches 8 --steps 6 --fill eval
"""

from __future__ import annotations

import argparse
from typing import Any

from pipeblocks.sim.engine import Simulation
from pipeblocks.sim.fill import FillPlan, parse_fill, place_fill

__all__ = ["add_fill_args", "fill_plan", "fill_json", "print_fill", "add_train_fill_args",
           "print_train_fill", "draw_train_fill"]

FILL_KINDS = ("eval", "side", "sleep")  # runtime.fill_train.FILL_KINDS (no torch import here)


def add_fill_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fill", metavar="DURATION[xCOUNT][@MEMORY],...", default=None,
                   help="place a queue of fill tasks (each rank its own copy, durations in the "
                   "cost model's time unit, memory in its memory unit) in every rank's idle "
                   "gaps without moving a pass; report the bubble time they use")
    p.add_argument("--fill-edges", action="store_true",
                   help="let fill use the lead and tail gaps too (default: between passes)")
    p.add_argument("--fill-picture", metavar="OUT", default=None,
                   help="draw the timeline with the fill tasks in the gaps (.png, .svg, .pdf)")


def fill_plan(args: argparse.Namespace, sim: Simulation) -> FillPlan | None:
    """The placement the options ask for (None without --fill); draws --fill-picture."""
    if args.fill is None:
        if args.fill_picture or args.fill_edges:
            from pipeblocks.errors import SpecError

            raise SpecError("--fill-picture and --fill-edges need --fill; e.g. --fill 0.25x100")
        return None
    plan = place_fill(sim, parse_fill(args.fill), capacity=args.capacity, edges=args.fill_edges)
    if args.fill_picture:
        from pipeblocks.visual.fill import draw_fill

        draw_fill(sim, plan.spans, args.fill_picture)
    return plan


def fill_json(plan: FillPlan) -> dict[str, Any]:
    return {
        "fill_tasks_done": plan.tasks_done,
        "fill_time": plan.fill_time,
        "fill_bubble": sum(plan.bubble),
        "fill_bubble_used": plan.bubble_used,
        "fill_tasks_done_per_rank": [len(r) for r in plan.spans],
        "fill_never_started": [list(r) for r in plan.too_long],
    }


def print_fill(plan: FillPlan) -> None:
    print(f"fill                {plan.tasks_done} tasks, {plan.fill_time:.6g} of "
          f"{sum(plan.bubble):.6g} bubble time ({plan.bubble_used:.1%} of the bubble used)")
    for r, never in enumerate(plan.too_long):
        if never:
            print(f"  rank {r}: {len(never)} tasks fit no gap (longer than every gap or "
                  f"larger than its free memory), never started: queue {list(never)[:8]}")


def add_train_fill_args(p: argparse.ArgumentParser) -> None:
    """``train --fill KIND``: work in each rank's gaps; odd steps run with it, even without."""
    from pipeblocks.cli.common import finite_float, positive_int

    p.add_argument("--fill", choices=FILL_KINDS, default=None,
                   help="run fill work in each rank's idle gaps: eval (forward-only batches of "
                   "this model, stage to stage), side (steps of a second small model), sleep "
                   "(--fill-ms sleeps); odd steps run with fill, even ones without; reports "
                   "fill_tasks_done, fill_bubble_used, fill_slowdown (docs/fill.md)")
    p.add_argument("--fill-ms", type=finite_float(0.0, strict=True), default=5.0, metavar="MS",
                   help="estimated duration of one fill task (default 5)")
    p.add_argument("--fill-count", type=positive_int, default=8, metavar="N",
                   help="--fill eval: evaluation microbatches (default 8)")
    p.add_argument("--fill-headroom", type=finite_float(0.0), default=None, metavar="MB",
                   help="memory a fill task may take on a rank, in MB (default: the rank's "
                   "memory peak minus what it holds now, so fill never raises the peak)")
    p.add_argument("--fill-picture", metavar="OUT", default=None,
                   help="draw the simulated timeline with the fill tasks where they ran in "
                   "the last step with fill (.png, .svg, .pdf)")


def draw_train_fill(args: argparse.Namespace, schedule: Any, report: dict[str, Any]) -> None:
    """``--fill-picture``: rank 0 draws the fill spans of the report on the timeline."""
    if not getattr(args, "fill_picture", None) or "fill_spans" not in report:
        return
    from pipeblocks.sim import UniformCosts, simulate
    from pipeblocks.sim.fill import FillSpan
    from pipeblocks.visual.fill import draw_fill

    sim = simulate(schedule, UniformCosts(f=1, b=1, w=1), validate=False)
    spans = [[FillSpan(*s) for s in rank] for rank in report["fill_spans"]]
    draw_fill(sim, spans, args.fill_picture,
              title=f"{schedule.name}: fill where it ran (last step with fill)")


def print_train_fill(r: dict[str, Any]) -> None:
    if "fill_tasks_done" not in r:
        return
    slow = r["fill_slowdown"]
    print(f"fill: {r['fill_tasks_done']} tasks, {r['fill_bubble_used']:.1%} of the simulated "
          f"bubble used, step with fill / without "
          f"{'-' if slow is None else format(slow, '.3f')}")
    if r.get("fill_memory_waits"):
        print(f"  {r['fill_memory_waits']} times a task waited for memory (lowest headroom "
              f"{r['fill_headroom_mb']:.3g} MB; --fill-headroom MB sets it)")
    for line in r["fill_errors"] + r["fill_never_started"][:4]:
        print(f"  {line}")
    if r["fill_eval_losses"]:
        print("  eval losses: " + ", ".join(f"{x:.4f}" for x in r["fill_eval_losses"]))
