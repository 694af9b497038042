"""``pipeblocks list [--json]``: the registered generators."""

from __future__ import annotations

import argparse

from pipeblocks.cli.common import emit_json
from pipeblocks.generators import generators


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("list", help="list the schedule generators",
                       description="List the schedule generators with their placement and source.")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    gens = generators()
    if args.json:
        emit_json({"generators": [
            {"name": g.name, "placement": g.placement.value, "stages_per_rank": g.stages_per_rank,
             "summary": g.summary, "source": g.source} for g in gens]})
        return 0
    w = max(len(g.name) for g in gens)
    for g in gens:
        print(f"{g.name.ljust(w)}  {g.placement.value:4}  v={g.stages_per_rank}  {g.summary}")
    print("# NAME-r (e.g. 1f1b-r): NAME with every stage recomputed (docs/memory.md)")
    return 0
