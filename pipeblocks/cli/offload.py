"""``--offload``: activation offload in ``simulate``, ``draw``, ``search`` and ``train``.

    $ pipeblocks simulate 1f1b -p 4 -m 8 --offload all --offload-link 2
    $ pipeblocks simulate gpipe -p 4 -m 8 --offload auto --offload-budget 1.0
    $ pipeblocks draw v-half -p 4 -m 8 --offload 0.5 -o v-half-offload.png

docs/memory.md, "Offload", has the link model and what offload costs.
"""

from __future__ import annotations

import argparse
from typing import Any

from pipeblocks.ir.offload import offload_label, parse_link, parse_offload, with_offload
from pipeblocks.ir.schedule import Schedule
from pipeblocks.sim.costs import CostModel
from pipeblocks.sim.engine import Simulation

__all__ = ["add_offload_args", "apply_offload", "offload_json", "search_offload",
           "add_train_offload_args", "check_train_offload", "OFFLOAD_FLAGS"]

OFFLOAD_FLAGS = [("offload", "--offload"), ("offload_link", "--offload-link"),
                 ("offload_budget", "--offload-budget"), ("emulate_link", "--emulate-link")]
"""``pipeblocks train``'s offload options, as (dest, flag), for the rank processes' argv."""


def add_offload_args(parser: argparse.ArgumentParser, budget: bool = True) -> None:
    """--offload all|none|auto|FRACTION, --offload-link and (unless the command has its own
    --memory) --offload-budget."""
    parser.add_argument(
        "--offload", metavar="all|none|auto|FRACTION", default=None,
        help="move activations to host memory after F and back before B: every eligible "
        "(stage, microbatch), none, a fraction of each stage's, or auto (the fewest, picked "
        "by a greedy search over simulated cost, to meet the memory budget; docs/memory.md)")
    parser.add_argument(
        "--offload-link", metavar="BW[,LATENCY][,shared]", default=None,
        help="the host link in the cost model's units: memory units per time unit (GB/s = "
        "bytes per ns) and a latency per copy; 'shared': copies share the link with the "
        "pipeline transfers (default: instant copies)")
    if budget:
        parser.add_argument(
            "--offload-budget", metavar="FRACTION", type=float, default=1.0,
            help="with --offload auto: every rank's peak at most FRACTION x 1F1B's peak "
            "(default 1.0)")


def apply_offload(schedule: Schedule, args: argparse.Namespace, costs: CostModel | None = None,
                  budget: float | None = None) -> Schedule:
    """``schedule`` with the pairs ``--offload`` names over ``--offload-link`` (unchanged when
    neither is given); ``auto`` meets ``budget`` (default ``--offload-budget``)."""
    text, link_text = getattr(args, "offload", None), getattr(args, "offload_link", None)
    if text is None and link_text is None:
        return schedule
    link = parse_link(link_text) if link_text is not None else None
    if text is None:  # only the link: the schedule's own pairs over it
        pairs = sorted(schedule.offload.pairs) if schedule.offload else []
        return with_offload(schedule, pairs, link)
    chosen = parse_offload(text, schedule)
    if chosen == "auto":
        from pipeblocks.search.offload import auto_offload

        limit = budget if budget is not None else getattr(args, "offload_budget", 1.0)
        return auto_offload(schedule, limit, costs, link)
    assert not isinstance(chosen, str)
    return with_offload(schedule, chosen, link)


def offload_json(schedule: Schedule, sim: Simulation) -> dict[str, object]:
    """The ``--json`` keys of the offload: the pairs, the link, each rank's host peak."""
    off = schedule.offload
    if off is None:
        return {"offload": None}
    from pipeblocks.ir.formats.json_io import offload_doc

    return {"offload": {**offload_doc(off), "host_peak": list(sim.host_peak)}}


def search_offload(searcher: Any, budget: Any, bar: Any, args: argparse.Namespace) -> Any:
    """``search --offload``: the search's best for the budget with ``--offload`` applied;
    ``auto`` below the least budget the schedules alone reach searches at that least budget
    and offloads the fewest pairs that bring every rank within the asked one."""
    import dataclasses

    from pipeblocks.search.budget import Budget, BudgetKind
    from pipeblocks.sim.engine import simulate

    auto = args.offload.strip().lower() == "auto"
    least = searcher.smallest(budget.kind)
    if auto and budget.value < least * (1 - 1e-9):
        result = searcher.best(Budget(least, budget.kind), bar)
    else:
        result = searcher.best(budget, bar)
    limit = budget.value if budget.kind is BudgetKind.FRACTION else \
        budget.value / max(result.simulation.reference_peak, 1e-300)
    schedule = apply_offload(result.schedule, args, searcher.costs, limit)
    sim = simulate(schedule, searcher.costs)
    how = f"{result.how} + {offload_label(schedule) or 'no offload'}"
    return dataclasses.replace(result, schedule=schedule, simulation=sim, how=how, budget=budget)


def add_train_offload_args(parser: argparse.ArgumentParser) -> None:
    """``train``: the offload options and ``--emulate-link GB/s`` (with ``--emulate-ms``, each
    copy sleeps its bytes / bandwidth on a side thread; with real passes, the copies are real
    and the sleep adds the link's time)."""
    add_offload_args(parser)
    parser.add_argument(
        "--emulate-link", type=float, default=None, metavar="GB/S",
        help="charge each offload copy bytes / (GB/s) on a side thread (docs/memory.md)")


def check_train_offload(schedule: Schedule, args: argparse.Namespace) -> None:
    """Refuse offload where the runtime does not build it, before any process starts: with
    tensor parallel (saved DTensors) and with FSDP2 (its hooks own the saved parameters)."""
    from pipeblocks.errors import SpecError

    if not schedule.offload or not schedule.offload.pairs:
        return
    if getattr(args, "tp", 1) > 1:
        raise SpecError(f"--offload with --tp {args.tp} is not built (saved tensors are "
                        f"DTensor shards); drop --offload or --tp")
    if getattr(args, "dp_mode", "ddp") == "fsdp" and getattr(args, "dp", 1) > 1:
        raise SpecError("--offload with --dp-mode fsdp is not built (FSDP2 reshards the "
                        "parameters the saved tensors point to); use --dp-mode ddp or drop "
                        "--offload")
