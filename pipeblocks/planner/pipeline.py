"""The pipeline step from the simulator, cached per pipeline shape and extrapolated in m.

Many plans share a pipeline shape: the same schedule, pp and microbatch count, and per-stage
costs that differ only by a common factor (the microbatch size and the tensor-parallel degree
scale every layer alike). So the planner simulates in *layer units* (time: one layer's
F + B + W; memory: one layer's mem_f), rounds the ratios to two significant digits, and keys
the cache on the result. Schedules are built once per (schedule, pp, m).

Past ``m = 3 pp`` a schedule's step grows by the same time for every further pp microbatches
(the steady state repeats) and its peak memory no longer grows, so the planner simulates
``m1 = 2 pp + (m mod pp)`` and ``m1 + pp`` and extrapolates. A generator that refuses m1 (a
divisibility rule: interleaved needs m mod pp = 0) refuses m as well, since both have the same
residue mod pp.

    >>> cache = PipelineCache()
    >>> costs = StageCosts.uniform(4, f=0.25, b=0.5, w=0.25)
    >>> run = cache.run("1f1b", 4, 8, costs)
    >>> run.makespan, run.peaks                 # (m + p - 1) * (f + b + w)
    (11.0, (4.0, 3.0, 2.0, 1.0))
    >>> cache.run("1f1b", 4, 400, costs).makespan   # from m = 8 and 12
    403.0
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeblocks.errors import SpecError
from pipeblocks.generators import get
from pipeblocks.ir.schedule import Schedule
from pipeblocks.search.engine import search
from pipeblocks.sim.costs_file import PerStageCosts
from pipeblocks.sim.engine import simulate

__all__ = ["StageCosts", "Run", "PipelineCache", "round2", "SEARCH", "search_budget"]

SEARCH = "search@"
"""Prefix of the searched schedules' names: ``search@0.6`` is the fastest V schedule
:func:`pipeblocks.search.search` finds within 0.6 of 1F1B's peak activation memory."""


def search_budget(name: str) -> float | None:
    """The budget of a ``search@B`` name; None for any other name.

    >>> search_budget("search@0.6"), search_budget("v-half")
    (0.6, None)
    """
    if not name.startswith(SEARCH):
        return None
    try:
        value = float(name[len(SEARCH):])
    except ValueError:
        value = -1.0
    if not 0 < value <= 4:
        raise SpecError(f"schedule {name!r}: the search budget must be a number in (0, 4] "
                        f"(a fraction of 1F1B's peak), e.g. search@0.6")
    return value


def round2(x: float) -> float:
    """``x`` to two significant digits (the cache's resolution)."""
    return float(f"{x:.2g}")


@dataclass(frozen=True, slots=True)
class StageCosts:
    """Per-stage F, B, W times and mem_f, mem_w in layer units; one transfer's time."""

    f: tuple[float, ...]
    b: tuple[float, ...]
    w: tuple[float, ...]
    mem_f: tuple[float, ...]
    mem_w: tuple[float, ...]
    comm: float = 0.0

    @classmethod
    def uniform(cls, stages: int, f: float, b: float, w: float) -> StageCosts:
        """One layer per stage, unit memory, no transfer cost."""
        one = (1.0,) * stages
        return cls((f,) * stages, (b,) * stages, (w,) * stages, one, one)

    def per_stage(self) -> PerStageCosts:
        return PerStageCosts(self.f, self.b, self.w, self.mem_f, self.mem_w, comm=self.comm)


@dataclass(frozen=True, slots=True)
class Run:
    """A simulated step in layer units: its time, each rank's peak, the bubble rate."""

    makespan: float
    peaks: tuple[float, ...]
    bubble_rate: float


@dataclass
class PipelineCache:
    """Schedules per (name, pp, m) and runs per (name, pp, m, costs); counts simulations."""

    schedules: dict[tuple[str, int, int], Schedule | None] = field(default_factory=dict)
    runs: dict[tuple[str, int, int, StageCosts], Run | None] = field(default_factory=dict)
    simulations: int = 0

    def schedule(self, name: str, pp: int, m: int, costs: StageCosts | None = None
                 ) -> Schedule | None:
        """The schedule, or None when its generator (or the search) refuses (pp, m)."""
        budget = search_budget(name)
        if budget is not None:
            try:
                per_stage = costs.per_stage() if costs is not None else None
                return search((pp, m), per_stage, budget=budget, family="v").schedule
            except SpecError:
                return None
        key = (name, pp, m)
        if key not in self.schedules:
            gen = get(name)
            try:
                self.schedules[key] = gen(gen.spec(pp, m))
            except SpecError:
                self.schedules[key] = None
        return self.schedules[key]

    def _simulate(self, name: str, pp: int, m: int, costs: StageCosts) -> Run | None:
        key = (name, pp, m, costs)
        if key not in self.runs:
            sched = self.schedule(name, pp, m, costs)
            if sched is None:
                self.runs[key] = None
            else:
                self.simulations += 1
                sim = simulate(sched, costs.per_stage())
                self.runs[key] = Run(sim.makespan, sim.peak_memory, sim.bubble_rate)
        return self.runs[key]

    def run(self, name: str, pp: int, m: int, costs: StageCosts) -> Run | None:
        """The step of ``name`` with pp ranks and m microbatches; None if it cannot be built."""
        if m <= 3 * pp:
            return self._simulate(name, pp, m, costs)
        m1 = 2 * pp + m % pp
        first, second = (self._simulate(name, pp, x, costs) for x in (m1, m1 + pp))
        if first is None or second is None:
            return None
        makespan = first.makespan + (m - m1) / pp * (second.makespan - first.makespan)
        peaks = tuple(max(a, b) for a, b in zip(first.peaks, second.peaks, strict=True))
        busy = second.makespan * (1 - second.bubble_rate) * m / (m1 + pp)
        return Run(makespan, peaks, max(0.0, 1 - busy / makespan))
