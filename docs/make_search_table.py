"""Make the table "Against the exact optimum" of docs/search.md: the named generators, the
heuristic search and the exact solver (pipeblocks.search.optimum) on each case.

    $ .venv/bin/python docs/make_search_table.py                 # all cases, rewrite the page
    $ .venv/bin/python docs/make_search_table.py -p 4 --print    # some cases, print rows only

Cases: p in {4, 6, 8}, m in {2p, 3p}, budgets from the smallest feasible one (family all) to
2 x 1F1B's peak, and three cost profiles:

- ``unit``: F = B = W = 1 per rank, no transfer cost;
- ``zb-1.5b``: the ZB paper's profile of its 1.5B model, per rank F = 18.522, B = 18.086,
  W = 9.337, transfer 0.601 (ms);
- ``hetero``: the same, with the first stage's passes 1.5 x and the last stage's 2 x as long
  (a large vocabulary: embedding and LM head), whatever the cut; memory equal per stage.

Each case gives the solver ``--time-limit`` seconds (default 5) per placement (V, the loop with
one stage per rank, the loop with two), warm-started from the search's best. tests/test_search_table.py recomputes the
proven rows of the smallest cases and checks the page shows what this script prints.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeblocks.generators import generate, generators
from pipeblocks.ir.actions import Pass
from pipeblocks.ir.spec import PipelineSpec
from pipeblocks.search import Searcher
from pipeblocks.search.optimum import search_exact
from pipeblocks.sim import CostModel, UniformCosts, simulate

PAGE = Path(__file__).with_name("search.md")
BEGIN, END = "<!-- exact-table: begin -->", "<!-- exact-table: end -->"
BUDGETS = (0.5, 0.75, 1.0, 1.5, 2.0)
ZB_15B = UniformCosts(f=18.522, b=18.086, w=9.337, comm=0.601)


@dataclass(frozen=True, slots=True)
class Heavy:
    """``base``'s times with the first stage ``first`` x and the last ``last`` x as long."""

    base: UniformCosts
    first: float = 1.5
    last: float = 2.0

    def describe(self) -> str:
        return f"{self.base.describe()}; first stage x{self.first:g}, last x{self.last:g}"

    def pass_time(self, spec: PipelineSpec, stage: int, kind: Pass) -> float:
        scale = self.first if stage == 0 else self.last if stage == spec.num_stages - 1 else 1
        return scale * self.base.pass_time(spec, stage, kind)

    def comm_time(self, spec: PipelineSpec, src_rank: int, dst_rank: int, stage: int) -> float:
        return self.base.comm_time(spec, src_rank, dst_rank, stage)

    def memory(self, spec: PipelineSpec, stage: int) -> tuple[float, float]:
        return self.base.memory(spec, stage)


PROFILES: dict[str, CostModel] = {"unit": UniformCosts(), "zb-1.5b": ZB_15B,
                                  "hetero": Heavy(ZB_15B)}


def budgets(p: int, m: int, costs: CostModel) -> list[float]:
    """The smallest feasible budget of family all, then those of BUDGETS above it."""
    low = math.ceil(Searcher(p, m, costs, "all").smallest() * 1e4 - 1e-6) / 1e4
    return [low, *(b for b in BUDGETS if b > low + 1e-9)]


def best_named(p: int, m: int, costs: CostModel, budget: float) -> tuple[str, float] | None:
    """The named generator with the shortest makespan whose peak fits ``budget``."""
    best: tuple[str, float] | None = None
    for gen in generators():
        try:
            sim = simulate(generate(gen.name, p, m), costs)
        except Exception:  # a generator that does not take (p, m): not a candidate here
            continue
        if sim.peak_fraction <= budget + 1e-9 and (best is None or sim.makespan < best[1]):
            best = (gen.name, sim.makespan)
    return best


def row(p: int, m: int, profile: str, budget: float, time_limit: float) -> str:
    """One table row (a markdown line)."""
    costs = PROFILES[profile]
    named = best_named(p, m, costs, budget)
    r = search_exact((p, m), costs, budget, "all", time_limit=time_limit)
    h = r.heuristic.makespan
    named_text = f"{named[1]:.6g} ({named[0]})" if named else "-"
    proven = "yes" if r.optimal else "no"
    over_exact = (h - r.makespan) / r.makespan
    over_bound = (h - r.bound) / r.bound if r.bound > 0 else 0.0
    return (f"| {p} | {m} | {profile} | {budget:g} | {named_text} | {h:.6g} | "
            f"{r.makespan:.6g} | {r.bound:.6g} | {proven} | {over_exact:.2%} | "
            f"{over_bound:.2%} |")


HEAD = ("| p | m | costs | budget | named (best) | search | exact | bound | proven | "
        "search over exact | search over bound |\n|---|---|---|---|---|---|---|---|---|---|---|")


def rows(ps: list[int], profiles: list[str], time_limit: float, stream: bool) -> list[str]:
    out = []
    for p in ps:
        for m in (2 * p, 3 * p):
            for prof in profiles:
                for b in budgets(p, m, PROFILES[prof]):
                    line = row(p, m, prof, b, time_limit)
                    if stream:
                        print(line, flush=True)
                    out.append(line)
    return out


def write_page(lines: list[str]) -> None:
    text = PAGE.read_text()
    block = f"{BEGIN}\n{HEAD}\n" + "\n".join(lines) + f"\n{END}"
    new, n = re.subn(re.escape(BEGIN) + ".*?" + re.escape(END), block, text, flags=re.S)
    if n != 1:
        sys.exit(f"{PAGE}: needs exactly one {BEGIN} ... {END} block")
    PAGE.write_text(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-p", type=int, nargs="*", default=[4, 6, 8])
    ap.add_argument("--profiles", nargs="*", default=list(PROFILES), choices=list(PROFILES))
    ap.add_argument("--time-limit", type=float, default=5.0,
                    help="solver seconds per placement and case (default 5)")
    ap.add_argument("--print", action="store_true", help="print the rows, leave the page")
    args = ap.parse_args()
    lines = rows(args.p, args.profiles, args.time_limit, stream=True)
    if not args.print:
        write_page(lines)


if __name__ == "__main__":
    main()
