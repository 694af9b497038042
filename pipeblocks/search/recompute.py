"""Recomputation as a search knob: budgets below the least memory any schedule alone needs.

Without recomputation the smallest budget is the least peak of any candidate (V-Min's, about
1/2 of 1F1B's peak with equal stages, or one activation per rank for the ZB heuristic). Below
it, :func:`recomputed` takes every schedule the :class:`~pipeblocks.search.engine.Searcher`
simulated at each source's least budget and tries it with
recomputation (:mod:`pipeblocks.ir.recompute`) of every stage, and, where a rank holds two
stages, of each local slot alone (half the saving for less of the extra time). Each variant is
simulated, so every point below V-Min comes with its own simulated cost.

    >>> from pipeblocks.search.engine import Searcher
    >>> s = Searcher(4, 8, family="v")
    >>> r = best_recomputed(s, Budget.fraction(0.3))
    >>> r.peak_fraction <= 0.3 < s.smallest(), sorted(r.schedule.recompute)
    (True, [0, 1, 2, 3, 4, 5, 6, 7])
"""

from __future__ import annotations

from pipeblocks.errors import SpecError
from pipeblocks.ir.recompute import recompute_label, with_recompute
from pipeblocks.ir.schedule import Schedule
from pipeblocks.search.budget import Budget
from pipeblocks.search.candidates import Candidate, rank_key, score
from pipeblocks.search.engine import Progress, Searcher, SearchResult
from pipeblocks.sim.engine import simulate

__all__ = ["variants", "recomputed", "best_recomputed", "search_recompute"]


def variants(schedule: Schedule) -> list[Schedule]:
    """``schedule`` with every stage recomputed and, for v > 1, each local slot alone."""
    spec = schedule.spec
    out = [with_recompute(schedule)]
    if spec.stages_per_rank > 1:
        for local in range(spec.stages_per_rank):
            stages = [s for s in range(spec.num_stages) if spec.local_of(s) == local]
            out.append(with_recompute(schedule, stages))
    return out


def recomputed(searcher: Searcher) -> list[Candidate]:
    """Every recompute variant of what the searcher finds at each source's least budget (the
    V search's, the ZB heuristic's, a named generator's), simulated; pass the list to
    :func:`best_recomputed` to answer many budgets."""
    for fraction, _, _ in searcher.floors():
        searcher.candidates(Budget.fraction(fraction))
    named = [searcher.named.candidate(e.name) for e in searcher.named.entries] \
        if searcher.named else []
    base = {c.schedule.name: c for c in [*searcher.evaluated.values(), *named]}
    out = []
    for c in sorted(base.values(), key=lambda c: c.schedule.name):
        for v in variants(c.schedule):
            sim = simulate(v, searcher.costs, validate=False)
            label = recompute_label(v).replace("recompute: ", "")
            out.append(Candidate(c.family, f"{c.how} + recompute {label}",
                                 v.renamed(f"{c.schedule.name}+r({label})"), sim))
    return out


def best_recomputed(searcher: Searcher, budget: Budget,
                    pool: list[Candidate] | None = None) -> SearchResult:
    """The fastest recomputed candidate (of ``pool``, default :func:`recomputed`) within
    ``budget``; a SpecError names the least budget recomputation reaches when even that is too
    small."""
    pool = recomputed(searcher) if pool is None else pool
    ok = [c for c in pool if budget.fits(c.peak, searcher._tab_of(c))]
    if not ok:
        least = min(c.simulation.peak_fraction for c in pool)
        raise SpecError(
            f"memory budget {budget.describe()} is below what recomputation reaches for family "
            f"{searcher.family} (p={searcher.p}, m={searcher.m}): {least:.4g} x 1F1B peak; "
            f"use a budget of {least:.4g} or more")
    c = min(ok, key=lambda c: rank_key(c, searcher.objective))
    return SearchResult(c.schedule, c.simulation, c.family, c.how, budget,
                        budget.limit(searcher._tab_of(c)), len(searcher.evaluated) + len(pool),
                        searcher.objective)


def search_recompute(searcher: Searcher, budget: Budget, progress: Progress | None = None,
                     pool: list[Candidate] | None = None) -> SearchResult:
    """The faster of the searcher's best for ``budget`` and the best recomputed schedule within
    it (either may be missing; a SpecError when both are)."""
    pool = recomputed(searcher) if pool is None else pool
    found = []
    if budget.value >= searcher.smallest(budget.kind) * (1 - 1e-9):
        found.append(searcher.best(budget, progress))
    if any(budget.fits(c.peak, searcher._tab_of(c)) for c in pool) or not found:
        found.append(best_recomputed(searcher, budget, pool))
    return min(found, key=lambda r: (score(r.simulation, searcher.objective),
                                     max(r.simulation.peak_memory)))

