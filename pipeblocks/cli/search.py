"""``pipeblocks search``: the fastest schedule whose peak memory fits a budget.

    $ pipeblocks search -p 8 -m 32 --memory 0.5
    $ pipeblocks search -p 8 -m 32 --memory 0.75 --cost f=3,b=4,w=2,comm=0.5 -o best.csv
    $ pipeblocks search --exact -p 4 -m 8 --memory 1.0 --cost f=1,b=1,w=1,comm=0 --json
    $ pipeblocks search -p 8 -m 32 --memory-bytes 3e10 --model layers=32,hidden=4096,heads=32,seq=4096 \\
          --machine flops=4e14,bandwidth=5e10 --json

``--memory FRACTION`` limits every rank's peak to FRACTION x 1F1B's peak for the same model;
``--memory-bytes N`` to N bytes (with a cost model whose memory is in bytes). ``--family``
picks the candidates (``v``: the V building-block search and the V generators; ``zb``: the ZB
heuristic and the loop generators; ``all``: both). A progress bar goes to stderr when the
search takes more than a second and stderr is a terminal (or with ``--progress``); ``--json``
keeps stderr quiet and prints one JSON object.

``--exact`` then runs the exact solver (:mod:`pipeblocks.search.optimum`; needs the ``solver``
extra) on each placement of the family for at most ``--time-limit`` seconds each, warm-started
from the heuristic's best, and reports the best schedule, whether it is proven optimal, else the
best bound and the gap. Every header names the costs: ``--cost`` per rank, ``--stage-cost`` or a
costs file per stage.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

from pipeblocks.cli.common import check_output, emit_json, finite_float, positive_int, write_output
from pipeblocks.cli.memory import add_recompute_knob
from pipeblocks.cli.offload import add_offload_args, search_offload
from pipeblocks.cli.simulate import add_costs_args, build_costs
from pipeblocks.errors import SpecError
from pipeblocks.ir.schedule import Schedule
from pipeblocks.search import Budget
from pipeblocks.search.candidates import FAMILIES
from pipeblocks.search.engine import Searcher
from pipeblocks.search.recompute import search_recompute
from pipeblocks.sim import CostModel, Simulation, describe_costs, memory_unit

__all__ = ["register", "run", "ProgressBar", "add_search_args"]


class ProgressBar:
    """A one-line bar on ``stream`` that appears once the work has taken ``delay`` seconds."""

    def __init__(self, label: str, enabled: bool, stream: TextIO | None = None,
                 delay: float = 1.0, width: int = 28) -> None:
        self.label, self.enabled, self.delay, self.width = label, enabled, delay, width
        self.stream = sys.stderr if stream is None else stream
        self.start = time.monotonic()
        self.shown = False

    def __call__(self, done: int, total: int, what: str) -> None:
        if not self.enabled or time.monotonic() - self.start < self.delay:
            return
        filled = int(self.width * done / max(total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total} {what[:40]:<40}")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        """Clear the line the bar used (nothing if it never showed)."""
        if self.shown:
            self.stream.write("\r" + " " * (len(self.label) + self.width + 56) + "\r")
            self.stream.flush()


def bar_for(args: argparse.Namespace, label: str) -> ProgressBar:
    """The bar the options ask for: on a terminal or with --progress, never with --json."""
    enabled = (sys.stderr.isatty() or args.progress) and not args.json
    return ProgressBar(label, enabled)


def add_search_args(p: argparse.ArgumentParser) -> None:
    """-p, -m, the cost options, --family, --no-named, --progress, --json."""
    p.add_argument("-p", "--ranks", dest="p", type=positive_int, required=True,
                   help="number of pipeline ranks (devices)")
    p.add_argument("-m", "--microbatches", dest="m", type=positive_int, required=True,
                   help="number of microbatches per step")
    add_costs_args(p)
    p.add_argument("--family", choices=FAMILIES, default="all",
                   help="candidates: v (V building blocks and V generators), zb (ZB heuristic "
                   "and loop generators) or all (default)")
    p.add_argument("--no-named", dest="named", action="store_false",
                   help="leave the named generators out of the candidates")
    add_recompute_knob(p)
    add_offload_args(p, budget=False)  # auto: the search's --memory budget (cli/offload.py)
    p.add_argument("--progress", action="store_true",
                   help="show the progress bar even when stderr is not a terminal")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "search", help="find the fastest schedule under a memory budget",
        description="Search V building blocks, the ZB heuristic, the list scheduler and the "
        "named generators for the schedule with the shortest simulated time whose peak "
        "activation memory fits the budget on every rank; with --exact, measure it against "
        "the exact solver's optimum or bound.")
    add_search_args(p)
    p.add_argument("--memory", metavar="FRACTION", type=float, default=None,
                   help="budget: at most FRACTION x 1F1B's peak memory per rank (e.g. 0.5)")
    p.add_argument("--memory-bytes", metavar="N", type=float, default=None,
                   help="budget: at most N bytes per rank (needs a cost model in bytes: "
                   "--model with --machine or --memory-model transformer, or a costs file)")
    p.add_argument("--objective", choices=("makespan", "bubble"), default="makespan",
                   help="what best means: the shortest simulated step (makespan, default) or "
                   "the papers' bubble rate, each rank's own span (bubble; the metric of the "
                   "CM paper's lower bound)")
    p.add_argument("--exact", action="store_true",
                   help="then run the exact solver (OR-Tools CP-SAT; the 'solver' extra) on "
                   "each placement of the family, warm-started from the search's best: says "
                   "whether the result is proven optimal, else the best bound and the gap")
    p.add_argument("--time-limit", metavar="S", type=finite_float(0.0, strict=True),
                   default=30.0,
                   help="with --exact: at most S seconds of solver time per placement "
                   "(default 30)")
    p.add_argument("--format", choices=("torch-csv", "json"), default=None,
                   help="format of -o FILE (default: from its extension, else torch-csv)")
    p.add_argument("-o", "--output", metavar="FILE", default=None,
                   help="write the schedule found to FILE")
    p.set_defaults(func=run)


def budget_of(args: argparse.Namespace, unit: str) -> Budget:
    """The budget --memory or --memory-bytes gives."""
    if (args.memory is None) == (args.memory_bytes is None):
        raise SpecError("give the budget with one of --memory FRACTION (of 1F1B's peak) or "
                        "--memory-bytes N")
    if args.memory is not None:
        return Budget.fraction(args.memory)
    if unit != "bytes":
        raise SpecError(f"--memory-bytes needs a cost model whose memory is in bytes (this "
                        f"one counts {unit}); add --model ... --memory-model transformer, "
                        f"use a costs file with \"memory_unit\": \"bytes\", or give --memory "
                        f"FRACTION")
    return Budget.memory(args.memory_bytes)


def run(args: argparse.Namespace) -> int:
    if args.output:  # before the search: its result must have somewhere to go
        check_output(args.output)
    costs = build_costs(args)
    budget = budget_of(args, memory_unit(costs))
    if args.exact:
        if args.objective != "makespan":
            raise SpecError("--exact minimizes the makespan; drop --objective "
                            f"{args.objective} or --exact")
        return _run_exact(args, costs, budget)
    bar = bar_for(args, "search")
    t0 = time.perf_counter()
    try:
        searcher = Searcher(args.p, args.m, costs, args.family, named=args.named,
                            objective=args.objective)
        result = search_offload(searcher, budget, bar, args) if args.offload else \
            search_recompute(searcher, budget, bar) if args.recompute else \
            searcher.best(budget, bar)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"costs": describe_costs(costs), **result.summary()}
    out["seconds"] = round(seconds, 3)
    _write(args, result.schedule, out)
    if args.json:
        emit_json(out)
        return 0
    _print_result(args, budget, result.limit, result.schedule.name, f"{result.family}: "
                  f"{result.how}", result.simulation, costs)
    print(f"candidates      {result.evaluated} simulated in {seconds:.2f} s")
    if args.output:
        print(f"written to      {args.output} ({out['output']['format']})")
    return 0


def _write(args: argparse.Namespace, schedule: Schedule, out: dict[str, Any]) -> None:
    """-o FILE: write ``schedule``, and say where in ``out``."""
    if not args.output:
        return
    from pipeblocks.ir.formats import detect, dumps  # lazily: only -o needs the writers

    fmt = args.format or detect(path=args.output)
    if fmt not in ("torch-csv", "json"):
        fmt = "torch-csv"
    write_output(args.output, dumps(schedule, fmt))
    out["output"] = {"path": args.output, "format": fmt}


def _print_result(args: argparse.Namespace, budget: Budget, limit: float, name: str, how: str,
                  sim: Simulation, costs: CostModel) -> None:
    asked = budget.describe() if args.memory is not None else \
        f"{budget.value:g} {sim.memory_unit} per rank"
    print(f"# search p={args.p} m={args.m} family={args.family} budget {asked} (limit "
          f"{limit:.6g} {sim.memory_unit} per rank)")
    print(f"# costs: {describe_costs(costs)}")
    print(f"schedule        {name}")
    print(f"built by        {how}")
    print(f"makespan        {sim.makespan:.6g}")
    print(f"bubble rate     {sim.bubble_rate:.4f}  (papers' metric; global "
          f"{sim.bubble_rate_global:.4f})")
    print(f"peak            {sim.peak_fraction:.4f} x 1F1B peak; per rank: "
          + " ".join(f"{x:.4g}" for x in sim.peak_memory))


def _run_exact(args: argparse.Namespace, costs: CostModel, budget: Budget) -> int:
    from pipeblocks.search.optimum import search_exact  # lazily: the solver is optional

    t0 = time.perf_counter()
    r = search_exact((args.p, args.m), costs, budget, args.family, time_limit=args.time_limit)
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"costs": describe_costs(costs), "budget": budget.describe(),
                           **r.summary(), "seconds": round(seconds, 3)}
    _write(args, r.schedule, out)
    if args.json:
        emit_json(out)
        return 0
    limit = next((e.limit for e in r.exact if e.schedule.spec == r.schedule.spec),
                 r.heuristic.limit)
    _print_result(args, budget, limit, r.schedule.name, "exact solver (CP-SAT)" if
                  r.schedule is not r.heuristic.schedule else "the heuristic search",
                  r.simulation, costs)
    verdict = "proven optimal" if r.optimal else f"not proven: gap {r.gap:.2%}"
    print(f"lower bound     {r.bound:.6g}  ({verdict})")
    print(f"heuristic       {r.heuristic.makespan:.6g}  {r.heuristic.schedule.name} "
          f"({r.heuristic_gap:.2%} above the bound)")
    for e in r.exact:
        print(f"  {e.schedule.spec.describe():<32} makespan {e.makespan:<10.6g} bound "
              f"{e.bound:<10.6g} {e.status.lower()} in {e.seconds:.1f} s")
    for where, why in r.skipped.items():
        print(f"  {where:<32} skipped: {why}")
    print(f"time            {seconds:.2f} s (solver limit {args.time_limit:g} s per placement)")
    if args.output:
        print(f"written to      {args.output} ({out['output']['format']})")
    return 0
