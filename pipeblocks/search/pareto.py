"""The memory/time trade-off: the best schedule at every budget, named schedules beside it.

:func:`pareto` asks one :class:`~pipeblocks.search.engine.Searcher` (which keeps everything it
builds) for the best schedule at a ladder of budgets, from the smallest feasible one to
``top`` (2 x 1F1B's peak by default). The ladder steps by one chunk-activation of the V
placement, 1/(2p) of 1F1B's peak, which is the granularity of the V blocks (loop schedules
step by 1/p, every other rung). Each rung reports the best found schedule; the named
generators are reported with their own peak and bubble, so a table or a plot can mark them.

    >>> front = pareto(4, 8, family="v", named=False)
    >>> [(round(pt.budget, 3), round(pt.result.peak_fraction, 3)) for pt in front.points][:3]
    [(0.5, 0.5), (0.625, 0.625), (0.75, 0.75)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pipeblocks.search.budget import Budget
from pipeblocks.search.engine import Progress, Searcher, SearchResult
from pipeblocks.search.recompute import recomputed, search_recompute
from pipeblocks.sim.costs import CostModel

__all__ = ["ParetoPoint", "NamedPoint", "Pareto", "pareto", "budget_ladder", "recompute_points"]


@dataclass(frozen=True, slots=True)
class ParetoPoint:
    """The best schedule found within ``budget`` (a fraction of 1F1B's peak)."""

    budget: float
    result: SearchResult


@dataclass(frozen=True, slots=True)
class NamedPoint:
    """A named generator's peak (fraction of 1F1B's), bubble rate and makespan."""

    name: str
    peak_fraction: float
    bubble_rate: float
    makespan: float


@dataclass(frozen=True, slots=True)
class Pareto:
    """Best schedule per budget (``points``), the named generators (``named``) and every
    candidate simulated on the way (``candidates``: (peak fraction, bubble rate) pairs)."""

    num_ranks: int
    num_microbatches: int
    points: tuple[ParetoPoint, ...]
    named: tuple[NamedPoint, ...]
    candidates: tuple[tuple[float, float], ...]

    def summary(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "num_ranks": self.num_ranks,
            "num_microbatches": self.num_microbatches,
            "points": [{"budget": pt.budget, **_brief(pt.result)} for pt in self.points],
            "named": [{"name": n.name, "peak_fraction": n.peak_fraction,
                       "bubble_rate": n.bubble_rate, "makespan": n.makespan}
                      for n in self.named],
        }


def _brief(r: SearchResult) -> dict[str, Any]:
    return {"name": r.schedule.name, "family": r.family, "how": r.how,
            "peak_fraction": r.peak_fraction, "bubble_rate": r.bubble_rate,
            "makespan": r.makespan}


def budget_ladder(num_ranks: int, smallest: float, top: float = 2.0) -> list[float]:
    """Budgets k/(2p) from the first at or above ``smallest`` up to ``top``, and ``smallest``
    itself first when it falls between two rungs."""
    step = 1.0 / (2 * num_ranks)
    first = math.ceil(smallest / step - 1e-9)
    ladder = [k * step for k in range(first, math.floor(top / step + 1e-9) + 1)]
    if not ladder or ladder[0] > smallest * (1 + 1e-9):
        ladder.insert(0, smallest)
    return [b for b in ladder if b <= top * (1 + 1e-9)]


def pareto(
    num_ranks: int,
    num_microbatches: int,
    costs: CostModel | None = None,
    family: str = "all",
    *,
    top: float = 2.0,
    named: bool = True,
    progress: Progress | None = None,
    recompute: bool = False,
) -> Pareto:
    """The best schedule at every budget of :func:`budget_ladder` (see the module docs);
    ``recompute``: recomputation is a knob too, the ladder starts at the least peak it
    reaches and each rung is the faster of the plain and the recomputed best
    (:func:`recompute_points`)."""
    searcher = Searcher(num_ranks, num_microbatches, costs, family, named=named)
    ladder = [] if recompute else budget_ladder(num_ranks, searcher.smallest(), top)
    points = recompute_points(searcher, top) if recompute else []
    for i, budget in enumerate(ladder):
        def step(done: int, total: int, what: str, i: int = i) -> None:
            if progress:
                progress(i * total + done, len(ladder) * total, what)

        points.append(ParetoPoint(budget, searcher.best(Budget.fraction(budget), step)))
    marks = []
    if searcher.named:
        for e in searcher.named.entries:
            sim = searcher.named.candidate(e.name).simulation
            marks.append(NamedPoint(e.name, sim.peak_fraction, sim.bubble_rate, sim.makespan))
    marks.sort(key=lambda n: (n.peak_fraction, n.bubble_rate, n.name))
    seen = sorted(searcher.evaluated.values(), key=lambda c: c.schedule.name)
    cloud = tuple((c.simulation.peak_fraction, c.simulation.bubble_rate) for c in seen)
    return Pareto(num_ranks, num_microbatches, tuple(points), tuple(marks), cloud)


def recompute_points(searcher: Searcher, top: float) -> list[ParetoPoint]:
    """Rungs from the least peak recomputation reaches up to ``top``, each the faster of the
    plain search's best and the best recomputed schedule (:mod:`pipeblocks.search.recompute`)."""
    pool = recomputed(searcher)
    least = min([searcher.smallest(), *(c.simulation.peak_fraction for c in pool)])
    return [ParetoPoint(b, search_recompute(searcher, Budget.fraction(b), pool=pool))
            for b in budget_ladder(searcher.p, least, top)]
