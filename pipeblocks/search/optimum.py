"""The search measured against the exact solver: the heuristic's best, then the proven optimum.

:func:`search_exact` runs the heuristic search (:func:`pipeblocks.search.search`), then the
exact solver (:mod:`pipeblocks.search.exact`) once per placement the family covers (``v``: the
V placement; ``zb``: the loop with one stage per rank; ``all``: both, and the loop with two
stages per rank of the interleaved schedules), each warm-started from
the heuristic's best schedule of that placement. The result says how far the heuristic is from
the best schedule of those placements: ``optimal`` when the solver proved it.

    >>> from pipeblocks.sim import UNIT
    >>> r = search_exact((2, 4), UNIT, 1.0, time_limit=10)
    >>> r.optimal, r.makespan, r.heuristic.makespan
    (True, 12.5, 12.5)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeblocks.errors import SpecError
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import PipelineSpec, Placement
from pipeblocks.search.budget import EPS, Budget
from pipeblocks.search.engine import Searcher, SearchResult
from pipeblocks.search.exact import ExactResult, NoScheduleFound, solve_exact
from pipeblocks.sim.costs import CostModel
from pipeblocks.sim.engine import Simulation
from pipeblocks.sim.tables import fits, tables

__all__ = ["ExactSearchResult", "search_exact", "exact_specs"]


def exact_specs(p: int, m: int, family: str) -> list[PipelineSpec]:
    """The placements the exact solver covers for ``family``: every one the search's
    candidates use (``all`` also has the interleaved loop with two stages per rank)."""
    v, loop, loop2 = PipelineSpec(p, m, 2, Placement.V), PipelineSpec(p, m), PipelineSpec(p, m, 2)
    return {"v": [v], "zb": [loop]}.get(family, [v, loop, loop2])


@dataclass(frozen=True, slots=True)
class ExactSearchResult:
    """The heuristic's result, the solver's per placement, and the best of all.

    ``bound``: the least of the per-placement bounds (a lower bound on every schedule of those
    placements within the budget); ``optimal``: the best schedule meets it; ``skipped``: the
    placements left out and why (costs of another number of stages, or no schedule fits)."""

    heuristic: SearchResult
    exact: tuple[ExactResult, ...]
    skipped: dict[str, str]
    schedule: Schedule
    simulation: Simulation
    bound: float

    @property
    def makespan(self) -> float:
        return self.simulation.makespan

    @property
    def optimal(self) -> bool:
        return self.makespan <= self.bound + EPS * max(1.0, self.bound)

    @property
    def gap(self) -> float:
        """(makespan - bound) / makespan."""
        return max(0.0, (self.makespan - self.bound) / self.makespan) if self.makespan else 0.0

    @property
    def heuristic_gap(self) -> float:
        """How far the heuristic is above the bound: (heuristic - bound) / bound."""
        h = self.heuristic.makespan
        return max(0.0, (h - self.bound) / self.bound) if self.bound > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the best schedule, "optimal", the bound, the gaps, each placement."""
        return {
            "schedule": self.schedule.name, "makespan": self.makespan,
            "bubble_rate": self.simulation.bubble_rate, "optimal": self.optimal,
            "bound": self.bound, "gap": round(self.gap, 6),
            "heuristic": {"schedule": self.heuristic.schedule.name,
                          "makespan": self.heuristic.makespan,
                          "gap_to_bound": round(self.heuristic_gap, 6)},
            "placements": [e.summary() for e in self.exact],
            "skipped": self.skipped,
        }


def search_exact(spec: PipelineSpec | tuple[int, int], costs: CostModel, budget: float | Budget,
                 family: str = "all", *, time_limit: float = 30.0,
                 workers: int | None = None) -> ExactSearchResult:
    """The heuristic search's best for ``budget``, then the exact solver on each placement of
    ``family`` for at most ``time_limit`` seconds each. Raises what :func:`search` raises
    (a budget below the smallest feasible one) and
    :class:`~pipeblocks.search.exact.SolverMissing` without OR-Tools."""
    p, m = (spec.num_ranks, spec.num_microbatches) if isinstance(spec, PipelineSpec) else spec
    b = budget if isinstance(budget, Budget) else Budget.fraction(budget)
    searcher = Searcher(p, m, costs, family)
    heur = searcher.best(b)
    found: list[ExactResult] = []
    skipped: dict[str, str] = {}
    bounds: list[float] = []
    for s in exact_specs(p, m, family):
        why = fits(s, costs)
        if why:
            skipped[s.describe()] = why
            continue
        limit = b.limit(tables(s, costs))
        hints = [c for c in searcher.evaluated.values()
                 if c.schedule.spec == s and c.peak <= limit + EPS * max(1.0, limit)]
        hint = min(hints, key=lambda c: (c.simulation.makespan, c.schedule.name)) if hints \
            else None
        try:
            found.append(solve_exact(s, costs, limit, time_limit=time_limit,
                                     hint=hint.schedule if hint else None, workers=workers))
        except NoScheduleFound as e:  # its bound still counts
            skipped[s.describe()] = str(e)
            bounds.append(e.bound)
        except SpecError as e:  # proven: no schedule of this placement fits
            skipped[s.describe()] = str(e)
    best_sim = min([heur.simulation, *(e.simulation for e in found)],
                   key=lambda x: x.makespan)
    bound = min([*(e.bound for e in found), *bounds], default=0.0)
    return ExactSearchResult(heur, tuple(found), skipped, best_sim.schedule, best_sim, bound)
