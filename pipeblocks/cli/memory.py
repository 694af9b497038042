"""``--recompute``: the memory knob that ``simulate``, ``draw``, ``search`` and ``pareto`` share.

    $ pipeblocks simulate 1f1b -p 4 -m 8 --recompute all
    $ pipeblocks draw zb-v -p 4 -m 8 --recompute 0,7 -o zbv-r.png
    $ pipeblocks pareto -p 8 -m 32 --recompute

docs/memory.md has what recomputation costs and saves.
"""

from __future__ import annotations

import argparse

from pipeblocks.ir.recompute import parse_recompute, with_recompute
from pipeblocks.ir.schedule import Schedule

__all__ = ["add_recompute_arg", "apply_recompute", "add_recompute_knob"]

_HELP = ("recompute stages: keep only each stage's input between F and B and re-run its "
         "forward at the start of B (all, none, or stages like 0,3; docs/memory.md)")


def add_recompute_arg(parser: argparse.ArgumentParser) -> None:
    """--recompute all|none|STAGES (default: the schedule's own choice)."""
    parser.add_argument("--recompute", metavar="all|none|STAGES", default=None, help=_HELP)


def apply_recompute(schedule: Schedule, args: argparse.Namespace) -> Schedule:
    """``schedule`` with the stages ``--recompute`` names (unchanged when it is not given)."""
    text = getattr(args, "recompute", None)
    if text is None:
        return schedule
    return with_recompute(schedule, parse_recompute(text, schedule.spec))


def add_recompute_knob(parser: argparse.ArgumentParser) -> None:
    """--recompute for ``search`` and ``pareto``: a switch, the search picks the stages."""
    parser.add_argument(
        "--recompute", action="store_true",
        help="let the search recompute stages (keep only stage inputs between F and B) where "
        "the budget is below what schedules alone reach; each such point is simulated with "
        "the extra forward (docs/memory.md)")
