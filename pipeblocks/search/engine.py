"""The search: the fastest schedule whose peak memory fits a budget, under the real costs.

:func:`search` gathers candidates from the V building-block search, the ZB heuristic and the
named generators (:mod:`pipeblocks.search.candidates`), keeps those whose simulated peak fits
the budget on every rank, and returns the one with the shortest simulated makespan. The result
is a normal :class:`~pipeblocks.ir.Schedule` whose name says how it was built, with its
simulation (:class:`SearchResult`). Since the named generators are candidates too, the result
is never slower than any of them that fits the same budget.

Families: ``v`` (V placement: the V search and the V generators), ``zb`` (loop placement with
one stage per rank: the ZB heuristic and GPipe, 1F1B, ZB-H1, ZB-H2) or ``all`` (both, and the
interleaved generators). A cost model that gives per-stage numbers fits only the placements
with its number of stages; the others are left out.

    >>> from pipeblocks.sim import UNIT
    >>> r = search((8, 32), UNIT, 0.5, family="v")
    >>> r.schedule.name, r.peak_fraction, round(r.bubble_rate, 4)
    ('search:v(f1=1,b1=2,b0=3,k0=3,k1=1,K=2)', 0.5, 0.107)
    >>> search((8, 32), UNIT, 0.4, family="v")
    Traceback (most recent call last):
    ...
    pipeblocks.errors.SpecError: memory budget 0.4 x 1F1B peak is below the smallest feasible one for family v (p=8, m=32): 0.5 x 1F1B peak (8 stage-activations per rank); use a budget of 0.5 or more, or family 'all' (feasible down to 0.125)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeblocks.errors import SpecError
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import PipelineSpec, Placement
from pipeblocks.search.budget import Budget, BudgetKind
from pipeblocks.search.candidates import (
    FAMILIES,
    ZB_RULES,
    Candidate,
    NamedPool,
    Objective,
    VFamily,
    rank_key,
    score,
    zb_candidates,
)
from pipeblocks.search.listsched import LIST_MAX_PASSES, LIST_RULES, list_candidates
from pipeblocks.search.zb import zb_smallest_limit
from pipeblocks.sim.costs import UNIT, CostModel, memory_unit
from pipeblocks.sim.engine import Simulation
from pipeblocks.sim.tables import Tables, fits, tables

__all__ = ["SearchResult", "Searcher", "search", "Progress"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
"""``progress(done, total, what)``: called as the search goes (for a progress bar)."""


@dataclass(frozen=True, slots=True)
class SearchResult:
    """The chosen schedule, its simulation, and how it was found.

    ``family`` is "v", "zb" or "named"; ``how`` the recipe (e.g.
    ``v(f1=1,b1=2,b0=3,k0=3,k1=1,K=2)``); ``limit`` the budget in the cost model's memory unit
    for the schedule's spec; ``evaluated`` how many candidates were simulated in all;
    ``objective`` what "best" meant (:class:`~pipeblocks.search.candidates.Objective`).
    """

    schedule: Schedule
    simulation: Simulation
    family: str
    how: str
    budget: Budget
    limit: float
    evaluated: int
    objective: Objective = Objective.MAKESPAN

    @property
    def makespan(self) -> float:
        return self.simulation.makespan

    @property
    def bubble_rate(self) -> float:
        return self.simulation.bubble_rate

    @property
    def peak_fraction(self) -> float:
        return self.simulation.peak_fraction

    @property
    def peak_memory(self) -> tuple[float, ...]:
        return self.simulation.peak_memory

    def summary(self) -> dict[str, Any]:
        """JSON-ready: what was asked, what was built and how it performs."""
        sim, spec = self.simulation, self.schedule.spec
        return {
            "name": self.schedule.name,
            "family": self.family,
            "how": self.how,
            "num_ranks": spec.num_ranks,
            "num_microbatches": spec.num_microbatches,
            "stages_per_rank": spec.stages_per_rank,
            "placement": spec.placement.value,
            "budget": {"value": self.budget.value, "kind": self.budget.kind.value},
            "objective": self.objective.value,
            "limit": self.limit,
            "memory_unit": sim.memory_unit,
            "makespan": sim.makespan,
            "bubble_rate": sim.bubble_rate,
            "bubble_rate_global": sim.bubble_rate_global,
            "peak_fraction": sim.peak_fraction,
            "peak_memory": list(sim.peak_memory),
            "evaluated": self.evaluated,
        }


class Searcher:
    """A search over one (p, m, costs, family), answering any number of budgets.

    Everything built or simulated is kept, so asking many budgets (the Pareto front) costs
    little more than asking one. ``named=False`` leaves the named generators out;
    ``objective`` says what "best" means (default: the shortest makespan).
    """

    def __init__(self, num_ranks: int, num_microbatches: int, costs: CostModel | None = None,
                 family: str = "all", *, named: bool = True, screen: int = 8,
                 objective: Objective | str = Objective.MAKESPAN) -> None:
        self.objective = Objective.parse(objective)
        if family not in FAMILIES:
            raise SpecError(f"unknown search family {family!r}; use one of: "
                            f"{', '.join(FAMILIES)}")
        self.p, self.m = num_ranks, num_microbatches
        self.costs = UNIT if costs is None else costs
        self.family = family
        PipelineSpec(num_ranks, num_microbatches)  # checks p and m
        self.skipped: dict[str, str] = {}
        self.v_tab = self._tab(PipelineSpec(num_ranks, num_microbatches, 2, Placement.V),
                               "v", family in ("v", "all"))
        self.loop_tab = self._tab(PipelineSpec(num_ranks, num_microbatches), "zb",
                                  family in ("zb", "all"))
        # the interleaved placement (loop, 2 stages per rank): list-scheduled in family all
        self.loop2_tab = self._tab(PipelineSpec(num_ranks, num_microbatches, 2), "interleaved",
                                   family == "all")
        self.v = VFamily(self.v_tab, self.costs, screen=screen,
                         objective=self.objective) if self.v_tab else None
        placements = {"v": [Placement.V], "zb": [Placement.LOOP],
                      "all": [Placement.V, Placement.LOOP]}[family]
        self.named = NamedPool(num_ranks, num_microbatches, self.costs, placements) \
            if named else None
        if self.named:
            if family == "zb":  # the loop generators with one stage per rank only
                self.named.entries = [e for e in self.named.entries
                                      if e.tab.spec.stages_per_rank == 1]
            self.skipped.update(self.named.skipped)
        self._zb: dict[float, list[Candidate]] = {}
        self._listed: dict[tuple[str, int, float], list[Candidate]] = {}
        self.evaluated: dict[str, Candidate] = {}  # schedule name -> candidate

    def _tab(self, spec: PipelineSpec, name: str, wanted: bool) -> Tables | None:
        if not wanted:
            return None
        why = fits(spec, self.costs)
        if why:
            self.skipped[name] = why
            return None
        return tables(spec, self.costs)

    # -- the smallest budget -------------------------------------------------------------
    def floors(self) -> list[tuple[float, float, str]]:
        """(fraction of 1F1B's peak, memory, source) of the least memory each source needs."""
        out = []
        if self.v and self.v_tab:
            peak = self.v.smallest_peak()
            out.append((peak / self.v_tab.reference, peak, "the V search's smallest block"))
        if self.loop_tab:
            peak = zb_smallest_limit(self.loop_tab.spec, self.costs)
            out.append((peak / self.loop_tab.reference, peak, "the ZB heuristic, one "
                        "activation per rank"))
        low_frac = min((f[0] for f in out), default=float("inf"))
        low_mem = min((f[1] for f in out), default=float("inf"))
        named = self.named
        for e in named.entries if named else ():
            # the probe's peak is a lower bound of the real one: a generator whose probe is
            # above both floors already found cannot give the least budget
            if named and (e.probe_peak / e.tab.reference < low_frac or e.probe_peak < low_mem):
                peak = named.peak(e.name)
                out.append((peak / e.tab.reference, peak, e.name))
        return out

    def smallest(self, kind: BudgetKind = BudgetKind.FRACTION) -> float:
        """The smallest budget of ``kind`` any candidate meets."""
        floors = self.floors()
        if not floors:
            raise SpecError(f"no candidate schedule fits these costs for family "
                            f"{self.family}: {'; '.join(self.skipped.values())}")
        return min(f[0] if kind is BudgetKind.FRACTION else f[1] for f in floors)

    def _too_small(self, budget: Budget) -> SpecError:
        frac = self.smallest(BudgetKind.FRACTION)
        best = min(self.floors(), key=lambda f: (f[0], f[1]))
        unit = memory_unit(self.costs)
        hint = ""
        if self.family != "all":
            everything = Searcher(self.p, self.m, self.costs, "all", named=self.named is not None)
            hint = f", or family 'all' (feasible down to {everything.smallest():.4g})"
        want = f"{frac:.4g}" if budget.kind is BudgetKind.FRACTION else f"{best[1]:.6g}"
        return SpecError(
            f"memory budget {budget.describe()} is below the smallest feasible one for family "
            f"{self.family} (p={self.p}, m={self.m}): {frac:.4g} x 1F1B peak ({best[1]:.6g} "
            f"{unit} per rank); use a budget of {want} or more{hint}")

    # -- one budget ----------------------------------------------------------------------
    def candidates(self, budget: Budget, progress: Progress | None = None) -> list[Candidate]:
        """Every candidate simulated for ``budget`` whose peak fits it, best first."""
        total, done = self._steps(budget), 0

        def tick(what: str) -> None:
            nonlocal done
            done += 1
            if progress:
                progress(min(done, total), total, what)

        found: list[Candidate] = []
        if self.named:
            for e in self.named.entries:
                if budget.fits(e.probe_peak, e.tab) and budget.fits(self.named.peak(e.name),
                                                                     e.tab):
                    found.append(self.named.candidate(e.name))
                    tick("named generators")
        if self.v and self.v_tab:
            found += self.v.best(budget.limit(self.v_tab), tick)
        if self.loop_tab:
            limit = budget.limit(self.loop_tab)
            # the floor bounds rank 0's span, so it bounds both objectives' first time
            best = min((score(c.simulation, self.objective)[0]
                        for c in [*found, *self.evaluated.values()]
                        if budget.fits(c.peak, self._tab_of(c))), default=float("inf"))
            floor = _loop_floor(self.loop_tab, limit)
            if floor >= best:
                log.info("ZB heuristic skipped: under limit %g no loop schedule beats %g "
                         "(at least %g)", limit, best, floor)
            elif limit + 1e-9 * max(1.0, limit) >= zb_smallest_limit(self.loop_tab.spec,
                                                                      self.costs):
                key = float(f"{limit:.12g}")
                if key not in self._zb:
                    self._zb[key] = zb_candidates(self.loop_tab.spec, self.costs, limit, tick)
                found += self._zb[key]
        for tab in (self.v_tab, self.loop_tab, self.loop2_tab):
            if tab is not None and 3 * tab.spec.num_stages * self.m <= LIST_MAX_PASSES:
                lkey = (tab.spec.placement.value, tab.spec.stages_per_rank,
                       float(f"{budget.limit(tab):.12g}"))
                if lkey not in self._listed:
                    self._listed[lkey] = list_candidates(tab, self.costs, lkey[2], tick)
                found += self._listed[lkey]
        for c in found:
            self.evaluated.setdefault(c.schedule.name, c)
        # whatever an earlier budget simulated and fits this one is a candidate too, so a
        # larger budget never gets a slower schedule
        ok = [c for c in self.evaluated.values() if budget.fits(c.peak, self._tab_of(c))]
        if progress:
            progress(total, total, "done")
        return sorted(ok, key=lambda c: rank_key(c, self.objective))

    def _tab_of(self, c: Candidate) -> Tables:
        spec = c.schedule.spec
        tab = self.v_tab if spec.placement is Placement.V else None
        if spec.placement is Placement.LOOP and spec.stages_per_rank == 1:
            tab = self.loop_tab
        if spec.placement is Placement.LOOP and spec.stages_per_rank == 2:
            tab = self.loop2_tab
        return tab if tab is not None else tables(spec, self.costs)

    def _steps(self, budget: Budget) -> int:
        n = 0
        if self.named:
            n += sum(1 for e in self.named.entries if budget.fits(e.probe_peak, e.tab))
        if self.v and self.v_tab:
            n += self.v.steps(budget.limit(self.v_tab))
        if self.loop_tab:
            n += len(ZB_RULES)
        n += sum(len(LIST_RULES) for t in (self.v_tab, self.loop_tab, self.loop2_tab)
                 if t is not None and 3 * t.spec.num_stages * self.m <= LIST_MAX_PASSES)
        return max(n, 1)

    def best(self, budget: float | Budget, progress: Progress | None = None) -> SearchResult:
        """The fastest candidate within ``budget`` (a float is a fraction of 1F1B's peak)."""
        b = budget if isinstance(budget, Budget) else Budget.fraction(budget)
        if b.value < self.smallest(b.kind) * (1 - 1e-9):
            raise self._too_small(b)
        ok = self.candidates(b, progress)
        if not ok:  # cannot happen above the smallest budget, but say so plainly if it does
            raise self._too_small(b)
        c = ok[0]
        log.info("search p=%d m=%d %s: %s, makespan %g, peak %.4g x 1F1B (%d candidates)",
                 self.p, self.m, b.describe(), c.schedule.name, c.simulation.makespan,
                 c.simulation.peak_fraction, len(self.evaluated))
        return SearchResult(c.schedule, c.simulation, c.family, c.how, b,
                            b.limit(self._tab_of(c)), len(self.evaluated), self.objective)


def _loop_floor(tab: Tables, limit: float) -> float:
    """A lower bound on the makespan of any loop schedule (one stage per rank) under ``limit``,
    and on its longest span (both bounds below hold within one rank's span).

    Rank 0 holds each microbatch's activation (mem_f of stage 0) from its F's start to its B's
    end at least: the F's down every stage and the B's back, with their transfers (R). With at
    most L = floor(limit / mem_f) held at once, m microbatches need m R / L of rank 0's time.
    Each rank also computes m (F + B + W) of its own.
    """
    m = tab.spec.num_microbatches
    own = max(m * (f + b + w) for f, b, w in zip(tab.f, tab.b, tab.w, strict=True))
    if tab.mem_f[0] <= 0:
        return own
    held = int(limit / tab.mem_f[0] + 1e-9)
    if held < 1:
        return float("inf")
    trip = sum(tab.f) + sum(tab.b) + sum(tab.comm_act) + sum(tab.comm_grad)
    return max(own, m * trip / held)


def search(
    spec: PipelineSpec | tuple[int, int],
    costs: CostModel | None = None,
    budget: float | Budget = 1.0,
    family: str = "all",
    *,
    named: bool = True,
    progress: Progress | None = None,
    objective: Objective | str = Objective.MAKESPAN,
) -> SearchResult:
    """The fastest schedule for ``spec`` (or ``(p, m)``; only p and m are used: the family
    picks the placement) under ``costs`` whose peak fits ``budget`` on every rank.

    ``budget``: a fraction of 1F1B's peak, or a :class:`Budget`. ``objective``: "makespan"
    (default) or "bubble" (the papers' metric first; :class:`~.candidates.Objective`). Raises
    :class:`~pipeblocks.errors.SpecError` naming the smallest feasible budget when it is
    below every candidate's peak. Deterministic: the same inputs give the same schedule.
    """
    p, m = (spec.num_ranks, spec.num_microbatches) if isinstance(spec, PipelineSpec) else spec
    return Searcher(p, m, costs, family, named=named, objective=objective).best(budget, progress)
