"""The exact solver: the shortest schedule that exists for one placement, costs and memory limit.

The whole step is one constraint program (OR-Tools CP-SAT, the ``solver`` extra): every F, B and
W of every stage and microbatch is an interval with its real duration; the dependency rules
(docs/design.md, "Passes and dependencies") with the transfer delay between ranks; one pass at a
time per rank (NoOverlap); and the activation memory per rank over time as a reservoir (F holds mem_f from its
start, B frees mem_f - mem_w at its end, W frees mem_w at its end: the simulator's accounting)
that never goes above the limit. The objective is the makespan. Passes are kept apart (B and W),
which loses nothing: a BW is a B with its W right after.

**Integer times.** CP-SAT needs integers, so times are counted in a quantum of 10^-5 of the
largest pass or transfer time's power of ten (:func:`quantum_of`; 6 significant digits) and
rounded down. Rounding down keeps the bound sound: every real schedule is a schedule of the
rounded problem, no longer. The schedule found is timed again with the real costs by the
simulator, and it is called optimal only when that real makespan meets the bound.

**Symmetry.** Microbatches are alike, so any schedule can be renumbered so that they enter
stage 0 in order; the model asks for that (and renumbers the hint the same way).

    >>> from pipeblocks.ir import PipelineSpec
    >>> from pipeblocks.sim import UNIT
    >>> r = solve_exact(PipelineSpec(2, 2, 2, "v"), UNIT, limit=4, time_limit=10)
    >>> r.optimal, r.simulation.makespan, r.bound
    (True, 6.5, 6.5)
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from pipeblocks.errors import PipeblocksError, SpecError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import PipelineSpec
from pipeblocks.ir.validate import validate
from pipeblocks.search.budget import EPS
from pipeblocks.sim.costs import CostModel
from pipeblocks.sim.engine import Simulation, simulate
from pipeblocks.sim.tables import Tables, tables

__all__ = ["ExactResult", "solve_exact", "quantum_of", "have_solver", "SolverMissing",
           "NoScheduleFound"]

log = logging.getLogger(__name__)

_KINDS = (Pass.F, Pass.B, Pass.W)


class SolverMissing(PipeblocksError):
    """The exact solver needs OR-Tools, which is not installed."""


class NoScheduleFound(PipeblocksError):
    """The solver ran out of time before its first schedule (and had no hint); ``bound`` is
    what it proved all the same."""

    def __init__(self, message: str, bound: float) -> None:
        super().__init__(message)
        self.bound = bound


def have_solver() -> bool:
    """Whether OR-Tools (CP-SAT) can be imported."""
    return importlib.util.find_spec("ortools") is not None


@dataclass(frozen=True, slots=True)
class ExactResult:
    """What the solver found for one spec.

    ``schedule``/``simulation``: the best schedule (the solver's, or the hint's when the
    solver found nothing better), timed with the real costs. ``bound``: a proven lower bound on
    the makespan of every schedule of this spec within ``limit``, in the cost model's time
    unit. ``optimal``: the makespan meets the bound. ``status``: CP-SAT's word. ``quantum``:
    the time resolution of the model; ``rounded``: whether some time was not a multiple of it.
    """

    schedule: Schedule
    simulation: Simulation
    bound: float
    optimal: bool
    status: str
    quantum: float
    rounded: bool
    limit: float
    seconds: float
    hint_makespan: float | None

    @property
    def makespan(self) -> float:
        return self.simulation.makespan

    @property
    def gap(self) -> float:
        """(makespan - bound) / makespan: 0 when proven optimal."""
        m = self.simulation.makespan
        return max(0.0, (m - self.bound) / m) if m > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready: spec, makespan, bound, gap, optimal, status, rounding."""
        spec = self.schedule.spec
        return {
            "placement": spec.placement.value, "stages_per_rank": spec.stages_per_rank,
            "schedule": self.schedule.name, "makespan": self.makespan,
            "bubble_rate": self.simulation.bubble_rate, "optimal": self.optimal,
            "bound": self.bound, "gap": round(self.gap, 6), "status": self.status,
            "limit": self.limit, "peak_fraction": self.simulation.peak_fraction,
            "hint_makespan": self.hint_makespan, "seconds": round(self.seconds, 3),
            "time_quantum": self.quantum,
            "rounding": ("times rounded down to the quantum; the bound holds for the real "
                         "times" if self.rounded else "none: every time is a multiple of "
                         "the quantum"),
        }


def quantum_of(values: list[float]) -> float:
    """The time unit of the model: 10^-5 of the largest value's power of ten (6 significant
    digits), or a finer power of ten, down to 10^-8 of it, that every value is a multiple of.

    >>> quantum_of([0.5, 1.0]), quantum_of([9.261, 0.601]), quantum_of([18.522, 7.00275])
    (1e-05, 1e-05, 1e-05)
    """
    top = max((v for v in values if v > 0), default=1.0)
    first = math.floor(math.log10(top)) - 5
    for k in range(first, first - 4, -1):
        q = float(10.0**k)
        if all(abs(v / q - round(v / q)) <= 1e-6 for v in values):
            return q
    return float(10.0**first)


def _ticks(x: float, q: float) -> int:
    """``x`` in quanta, rounded down (a hair of float error is not a quantum)."""
    y = x / q
    k = round(y)
    return int(k) if abs(y - k) <= 1e-9 * max(1.0, abs(y)) else int(math.floor(y))


@dataclass(frozen=True, slots=True)
class _Ticked:
    """``costs`` with every time in whole quanta, rounded down: the solver's view. Sums of
    whole numbers are exact in floats, so the hint timed with it fits the model exactly."""

    costs: CostModel
    q: float

    def pass_time(self, spec: PipelineSpec, stage: int, kind: Pass) -> float:
        if kind is Pass.BW:
            return float(self.pass_time(spec, stage, Pass.B) + self.pass_time(spec, stage, Pass.W))
        return float(_ticks(self.costs.pass_time(spec, stage, kind), self.q))

    def comm_time(self, spec: PipelineSpec, src_rank: int, dst_rank: int, stage: int) -> float:
        return float(_ticks(self.costs.comm_time(spec, src_rank, dst_rank, stage), self.q))

    def memory(self, spec: PipelineSpec, stage: int) -> tuple[float, float]:
        return self.costs.memory(spec, stage)


def _memory_scale(values: list[float]) -> tuple[int, bool]:
    """An integer factor that makes every memory value whole, or 10^6 of the largest (then
    rounded: ``False``)."""
    for k in range(7):
        f = 10**k
        if all(abs(v * f - round(v * f)) <= 1e-9 * max(1.0, abs(v * f)) for v in values):
            return f, True
    top = max(values) or 1.0
    return max(1, int(10 ** (6 - math.floor(math.log10(top))))), False


def _passes(spec: PipelineSpec) -> list[Action]:
    m = spec.num_microbatches
    return [Action(s, k, j) for s in range(spec.num_stages) for k in _KINDS for j in range(m)]


def _hint_starts(hint: Schedule, costs: CostModel, q: float) -> tuple[dict[Action, int], int]:
    """Start of every F, B, W of ``hint`` in quanta, timed with the rounded-down times (a BW
    split into its B and its W), microbatches renumbered in the order they enter stage 0; and
    its makespan in quanta."""
    ticked = _Ticked(costs, q)
    sim = simulate(hint, ticked)
    tab = tables(hint.spec, ticked)
    order = sorted(((t, a.mb) for r, prog in enumerate(hint.programs)
                    for a, t in zip(prog, sim.starts[r], strict=True)
                    if a.kind is Pass.F and a.stage == 0))
    new = {mb: i for i, (_, mb) in enumerate(order)}
    out: dict[Action, int] = {}
    for r, prog in enumerate(hint.programs):
        for a, t in zip(prog, sim.starts[r], strict=True):
            j = new[a.mb]
            if a.kind is Pass.BW:
                out[Action(a.stage, Pass.B, j)] = round(t)
                out[Action(a.stage, Pass.W, j)] = round(t + tab.b[a.stage])
            else:
                out[Action(a.stage, a.kind, j)] = round(t)
    return out, round(sim.makespan)


def _earliest(tab: Tables, dur: dict[Action, int], comm_a: list[int], comm_g: list[int],
              m: int) -> dict[Action, int]:
    """Earliest start of every pass from the dependencies alone (in quanta)."""
    n = tab.spec.num_stages
    es: dict[Action, int] = {}
    for j in range(m):
        t = 0
        for s in range(n):
            t += comm_a[s] if s else 0
            es[Action(s, Pass.F, j)] = t
            t += dur[Action(s, Pass.F, j)]
        for s in reversed(range(n)):
            if s < n - 1:
                t += comm_g[s]
            es[Action(s, Pass.B, j)] = t
            es[Action(s, Pass.W, j)] = t + dur[Action(s, Pass.B, j)]
            t += dur[Action(s, Pass.B, j)]
    return es


def solve_exact(spec: PipelineSpec, costs: CostModel, limit: float, *, time_limit: float = 30.0,
                hint: Schedule | None = None, workers: int | None = None) -> ExactResult:
    """The shortest schedule of ``spec`` under ``costs`` whose peak stays within ``limit`` (in
    the cost model's memory unit) on every rank, or the best found in ``time_limit`` seconds
    with a proven lower bound. ``hint``: a schedule of the same spec to start from (CP-SAT's
    hint, and an upper bound: the result is never slower); by default the list scheduler's
    best (:mod:`~pipeblocks.search.listsched`). Raises :class:`SolverMissing`
    without OR-Tools, :class:`SpecError` when ``hint`` is of another spec."""
    if not have_solver():
        raise SolverMissing("the exact solver needs OR-Tools (CP-SAT), which is not installed; "
                            "install the 'solver' extra: pip install 'pipeblocks[solver]'")
    from ortools.sat.python import cp_model  # lazily: an optional dependency

    if hint is not None and hint.spec != spec:
        raise SpecError(f"the hint is for {hint.spec.describe()}, the solver for "
                        f"{spec.describe()}; give a hint of the same spec")
    t0 = time.perf_counter()
    tab = tables(spec, costs)
    if hint is None:  # the list scheduler's best, so that the solver never starts empty
        hint = _list_hint(tab, costs, limit)
    m = spec.num_microbatches
    q = quantum_of([*tab.f, *tab.b, *tab.w, *tab.comm_act, *tab.comm_grad])
    times = [*tab.f, *tab.b, *tab.w, *tab.comm_act, *tab.comm_grad]
    rounded = any(abs(x / q - round(x / q)) > 1e-6 for x in times)
    dur = {a: _ticks(tab.duration(a.stage, a.kind), q) for a in _passes(spec)}
    comm_a = [_ticks(x, q) for x in tab.comm_act]
    comm_g = [_ticks(x, q) for x in tab.comm_grad]
    es = _earliest(tab, dur, comm_a, comm_g, m)

    hint_starts, hint_ticks = _hint_starts(hint, costs, q) if hint else ({}, None)
    hint_makespan = simulate(hint, costs).makespan if hint else None
    horizon = (hint_ticks if hint_ticks is not None
               else sum(dur.values()) + m * (sum(comm_a) + sum(comm_g)))

    scale, exact_memory = _memory_scale([*tab.mem_f, *tab.mem_w, limit])
    model, start, makespan, floor = _build(cp_model.CpModel(), spec, tab, dur, comm_a, comm_g,
                                           es, horizon, limit, scale, exact_memory)
    for a, t in hint_starts.items():
        model.add_hint(start[a], t)
    if hint_ticks is not None:
        model.add_hint(makespan, hint_ticks)

    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit)
    solver.parameters.num_workers = workers or max(1, min(8, os.cpu_count() or 1))
    code = solver.solve(model)
    status = solver.status_name(code)
    if code == cp_model.INFEASIBLE and hint is None:
        raise SpecError(f"no schedule of {spec.describe()} keeps every rank's peak within "
                        f"{limit:g}; raise the memory limit")
    best, sim = hint, simulate(hint, costs) if hint else None
    if code in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        found = _schedule_of(spec, {a: solver.value(v) for a, v in start.items()}, dur, tab,
                             f"exact:{spec.placement.value}(limit={limit:g})")
        found_sim = simulate(found, costs)
        fits = max(found_sim.peak_memory) <= limit + EPS * max(1.0, limit)
        if fits and (sim is None or found_sim.makespan < sim.makespan - EPS):
            best, sim = found, found_sim
    if best is None or sim is None:
        raise NoScheduleFound(
            f"the exact solver found no schedule of {spec.describe()} within {limit:g} in "
            f"{time_limit:g} s ({status}; proven bound {max(floor, solver.best_objective_bound) * q:g}"
            f") and had no hint; give a longer --time-limit",
            max(floor, solver.best_objective_bound) * q)
    # CP-SAT's bound holds for the rounded-down times, so for the real ones; never above what
    # was found (the model asks for no more than the hint). With a hint the model is feasible;
    # should CP-SAT say otherwise, only the floor is trusted.
    proven = solver.best_objective_bound if code in (cp_model.OPTIMAL, cp_model.FEASIBLE,
                                                     cp_model.UNKNOWN) else floor
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE, cp_model.UNKNOWN):
        log.warning("exact %s: CP-SAT says %s although the hint is a schedule", spec.describe(),
                    status)
    bound = min(max(floor, proven) * q, sim.makespan)
    optimal = sim.makespan <= bound + EPS * max(1.0, bound) + 1e-12
    seconds = time.perf_counter() - t0
    log.info("exact %s limit %g: %s, makespan %g, bound %g (%.1f s)", spec.describe(), limit,
             status, sim.makespan, bound, seconds)
    return ExactResult(best, sim, bound, optimal, status, q, rounded or not exact_memory, limit,
                       seconds, hint_makespan)


def _build(model: Any, spec: PipelineSpec, tab: Tables, dur: dict[Action, int],
           comm_a: list[int], comm_g: list[int], es: dict[Action, int], horizon: int,
           limit: float, scale: int, exact_memory: bool
           ) -> tuple[Any, dict[Action, Any], Any, int]:
    """The CP-SAT model of one step: a start per pass, the dependencies with their transfers,
    one pass at a time per rank, the memory cap per rank; minimise the makespan. Returns the
    model, the start variables, the makespan variable and the trivial floor."""
    m, n = spec.num_microbatches, spec.num_stages
    start: dict[Action, Any] = {}
    interval: dict[Action, Any] = {}
    for a, d in dur.items():
        start[a] = model.new_int_var(es[a], max(es[a], horizon - d), f"s{a}")
        interval[a] = model.new_fixed_size_interval_var(start[a], d, f"i{a}")
    makespan = model.new_int_var(0, horizon, "makespan")
    for s in range(n):
        for j in range(m):
            f, b, w = Action(s, Pass.F, j), Action(s, Pass.B, j), Action(s, Pass.W, j)
            if s > 0:
                model.add(start[f] >= start[Action(s - 1, Pass.F, j)]
                          + dur[Action(s - 1, Pass.F, j)] + comm_a[s])
            model.add(start[b] >= start[f] + dur[f])
            if s < n - 1:
                up = Action(s + 1, Pass.B, j)
                model.add(start[b] >= start[up] + dur[up] + comm_g[s])
            model.add(start[w] >= start[b] + dur[b])
            model.add(makespan >= start[w] + dur[w])
    for j in range(m - 1):  # symmetry: microbatches enter stage 0 in order
        model.add(start[Action(0, Pass.F, j + 1)] >= start[Action(0, Pass.F, j)])
    cap = math.ceil(limit * scale - 1e-9) if not exact_memory else round(limit * scale)
    floor = 0  # no rank ends before its first pass can start plus all its work
    for r in range(spec.num_ranks):
        mine = [a for a in dur if tab.rank_of[a.stage] == r]
        model.add_no_overlap([interval[a] for a in mine])
        floor = max(floor, min(es[a] for a in mine) + sum(dur[a] for a in mine))
        model.add(makespan >= floor)
        _hold(model, mine, start, dur, tab, scale, cap, makespan)
    model.minimize(makespan)
    return model, start, makespan, floor


def _hold(model: Any, mine: list[Action], start: dict[Action, Any], dur: dict[Action, int],
          tab: Tables, scale: int, cap: int, makespan: Any) -> None:
    """One rank's activation memory within ``cap``: stage s of microbatch j holds
    mem_f - mem_w from its F's start to its B's end and mem_w to its W's end (a cumulative of
    intervals of variable length, which CP-SAT reasons about better than a reservoir), and
    all of it together fits under ``cap`` for the whole makespan (memory x time)."""
    intervals, demands, energy = [], [], []
    for a in mine:
        if a.kind is not Pass.F:
            continue
        mf = math.floor(tab.mem_f[a.stage] * scale + 1e-9)
        mw = math.floor(tab.mem_w[a.stage] * scale + 1e-9)
        for until, demand in ((Pass.B, mf - mw), (Pass.W, mw)):
            if demand <= 0:
                continue
            end_pass = Action(a.stage, until, a.mb)
            end = start[end_pass] + dur[end_pass]
            size = model.new_int_var(0, 2**40, f"held{a}{until.value}")
            model.add(size == end - start[a])
            intervals.append(model.new_interval_var(start[a], size, end, f"h{a}{until.value}"))
            demands.append(demand)
            energy.append(demand * size)
    if intervals:
        model.add_cumulative(intervals, demands, cap)
        model.add(sum(energy) <= cap * makespan)


def _list_hint(tab: Tables, costs: CostModel, limit: float) -> Schedule | None:
    from pipeblocks.search.listsched import list_candidates  # it imports the candidates

    ok = [c for c in list_candidates(tab, costs, limit)
          if c.peak <= limit + EPS * max(1.0, limit)]
    return min(ok, key=lambda c: (c.simulation.makespan, c.schedule.name)).schedule \
        if ok else None


def _schedule_of(spec: PipelineSpec, starts: dict[Action, int], dur: dict[Action, int],
                 tab: Tables, name: str) -> Schedule:
    """Each rank's passes in the order the solver starts them (a zero-length pass first), as a
    validated :class:`Schedule`."""
    programs: list[list[tuple[int, int, int, Action]]] = [[] for _ in range(spec.num_ranks)]
    for a, t in starts.items():
        programs[tab.rank_of[a.stage]].append((t, t + dur[a], _KINDS.index(a.kind), a))
    sched = Schedule.from_lists(spec, [[x[3] for x in sorted(p)] for p in programs], name)
    validate(sched)
    return sched
