"""The event engine: when does every pass run, and how much memory does each rank hold?

Each rank runs its program in order, one pass at a time. A pass starts at the later of the
moment its rank is free and the end of each dependency, plus a transfer when the dependency ran
on another rank (the V turn is free: see :mod:`pipeblocks.ir`). One list execution computes
every time in O(actions): :func:`pipeblocks.ir.deps.walk` with its timing hook, fed by the
cost tables of :mod:`pipeblocks.sim.tables`.

    >>> from pipeblocks.generators import generate
    >>> sim = simulate(generate("1f1b", num_ranks=4, num_microbatches=8))
    >>> sim.makespan, round(sim.bubble_rate, 4), sim.peak_memory
    (33.0, 0.2727, (4.0, 3.0, 2.0, 1.0))

Memory (docs/design.md, "Memory accounting"): F allocates ``mem_f`` at its start; B frees
``mem_f - mem_w``, W frees ``mem_w`` and BW frees ``mem_f``, each at its end.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeblocks.checks import expect
from pipeblocks.errors import DeadlockError, SpecError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.bulk import no_gc
from pipeblocks.ir.deps import Timing, walk
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.validate import validate as validate_schedule
from pipeblocks.sim.costs import UNIT, CostModel, memory_unit
from pipeblocks.sim.offload import MoveSpan, run_offload
from pipeblocks.sim.recompute import rebuild_memory, recompute_tables
from pipeblocks.sim.tables import Tables, tables

__all__ = ["Span", "Simulation", "simulate"]


@dataclass(frozen=True, slots=True)
class Span:
    """One pass on the timeline."""

    rank: int
    action: Action
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Simulation:
    """A simulated schedule: the timeline, memory per rank over time and the metrics.

    - ``spans[r]``: rank r's passes in program order (the timeline), built on first use from
      ``starts[r]`` and ``ends[r]`` (the times of ``schedule.programs[r]``, position by
      position): most callers want only the metrics, and a million spans cost a third of a
      large simulation.
    - ``memory[r]``: ``(time, held)`` steps of rank r's activation memory, starting at (0, 0).
    - ``peak_memory[r]``: the most rank r holds at once (cost model's memory unit).
    - ``busy[r]``: time rank r computes; ``span[r]``: its last end minus its first start.
    - ``bubble_rate``: the papers' metric, (max span - busy) / max span, busy averaged over ranks.
    - ``bubble_rate_global``: (makespan - busy) / makespan, everyone starting at 0.
    - ``peak_fraction``: max peak / ``reference_peak``.
    - ``reference_peak``: 1F1B's peak for the same model and p with m >= p
      (:func:`pipeblocks.sim.costs.one_f_one_b_peak`); the sum of mem_f over the stages
      (the whole model's activation for one microbatch) when memory is uniform.
    - ``memory_unit``: what ``peak_memory`` counts ("stage-activations" or "bytes").
    - ``moves[r]``, ``host_memory[r]``, ``host_peak[r]``: with offload (:mod:`pipeblocks.sim.
      offload`), rank r's copies on its host link and its host memory; empty without.
    """

    schedule: Schedule
    starts: tuple[tuple[float, ...], ...]
    ends: tuple[tuple[float, ...], ...]
    memory: tuple[tuple[tuple[float, float], ...], ...]
    peak_memory: tuple[float, ...]
    busy: tuple[float, ...]
    span: tuple[float, ...]
    makespan: float
    bubble_rate: float
    bubble_rate_global: float
    peak_fraction: float
    reference_peak: float = 0.0
    memory_unit: str = "stage-activations"
    stage_activation: float = 1.0
    moves: tuple[tuple[MoveSpan, ...], ...] = ()
    host_memory: tuple[tuple[tuple[float, float], ...], ...] = ()
    host_peak: tuple[float, ...] = ()
    _spans: tuple[tuple[Span, ...], ...] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def spans(self) -> tuple[tuple[Span, ...], ...]:
        """Per rank, its passes in program order with their times (built once, then kept)."""
        if self._spans is None:
            built = tuple(
                tuple(map(Span, [r] * len(prog), prog, st, en))
                for r, (prog, st, en) in enumerate(
                    zip(self.schedule.programs, self.starts, self.ends, strict=True)
                )
            )
            object.__setattr__(self, "_spans", built)  # a cache on a frozen object
            return built
        return self._spans

    @property
    def idle(self) -> tuple[float, ...]:
        """Per rank: makespan minus busy time (idle in the global view)."""
        return tuple(self.makespan - b for b in self.busy)

    @property
    def idle_inner(self) -> tuple[float, ...]:
        """Per rank: idle time between its first start and its last end."""
        return tuple(s - b for s, b in zip(self.span, self.busy, strict=True))

    @property
    def peak_stage_activations(self) -> tuple[float, ...]:
        """Per rank peak in stage-activations: peak over the mean mem_f of one stage."""
        a = self.stage_activation
        return tuple(pk / a if a > 0 else 0.0 for pk in self.peak_memory)

    def timeline(self) -> list[Span]:
        """Every pass of every rank, by start time (then rank)."""
        return sorted((sp for rs in self.spans for sp in rs), key=lambda sp: (sp.start, sp.rank))

    def span_of(self, action: Action) -> Span:
        """The span of one action (a linear search: build a dict for many look-ups)."""
        rank = self.schedule.spec.rank_of(action.stage)
        for sp in self.spans[rank]:
            if sp.action == action:
                return sp
        raise SpecError(f"{action} is not in schedule {self.schedule.name or '(unnamed)'}")


def simulate(
    schedule: Schedule, costs: CostModel | None = None, *, validate: bool = True
) -> Simulation:
    """Time ``schedule`` under ``costs`` (unit costs by default).

    The schedule is validated first (:func:`pipeblocks.ir.validate`: a ScheduleError names the
    broken rule), so an incomplete schedule never gets a makespan. ``validate=False`` skips that
    for a schedule known to be valid (the search's own candidates; about a third of the time at
    scale); programs that then cannot all finish raise :class:`DeadlockError` naming each
    stuck rank's next pass.
    """
    expect("simulate", "schedule", schedule, Schedule)
    expect("simulate", "costs", costs, CostModel, none=True)
    expect("simulate", "validate", validate, bool)
    costs = UNIT if costs is None else costs
    if validate:
        validate_schedule(schedule)
    with no_gc():  # a few objects per pass, no cycles: see pipeblocks.ir.bulk
        return _simulate(schedule, costs)


def _simulate(schedule: Schedule, costs: CostModel) -> Simulation:
    tab = recompute_tables(tables(schedule.spec, costs), schedule)
    if schedule.offload is not None:  # copies on the host link: sim/offload.py
        run = run_offload(schedule, costs, tab)
        sim = _measure(schedule, costs, tab, run.starts, run.ends)
        return dataclasses.replace(
            sim, memory=run.memory, peak_memory=run.peaks, moves=run.moves,
            host_memory=run.host, host_peak=run.host_peaks,
            peak_fraction=max(run.peaks) / sim.reference_peak if sim.reference_peak else 0.0)
    timing = Timing((tab.f, tab.b, tab.w, tab.bw), tab.comm_act, tab.comm_grad)
    blocked = walk(schedule, timing=timing)
    if blocked:
        heads = {b.rank: f"{b.action} (waits for {', '.join(map(str, b.unmet))})"
                 for b in blocked}
        text = "; ".join(f"rank {r}: {h}" for r, h in sorted(heads.items()))
        raise DeadlockError(
            f"schedule {schedule.name or '(unnamed)'} cannot finish: {text}; validate it for "
            f"the broken rule",
            blocked=heads,
        )
    return _measure(schedule, costs, tab, timing.starts, timing.ends)


def _measure(
    schedule: Schedule,
    costs: CostModel,
    tab: Tables,
    starts: Sequence[Sequence[float]],
    ends: Sequence[Sequence[float]],
) -> Simulation:
    spec = schedule.spec
    mem = list(zip(tab.mem_f, tab.mem_w, strict=True))
    # what each pass adds to the rank's memory; F at its start, the others at their end
    add_f, bump = rebuild_memory(schedule, costs, tab)  # recompute: docs/memory.md
    rebuilt = bool(schedule.recompute)
    add_b = [mw - mf for mf, mw in mem]
    add_w = [-mw for _, mw in mem]
    add_bw = [-mf for mf, _ in mem]
    kind_f, kind_b, kind_w = Pass.F, Pass.B, Pass.W
    traces, peaks, busy, span = [], [], [], []
    for r, prog in enumerate(schedule.programs):
        st, en = starts[r], ends[r]
        held, peak = 0.0, 0.0
        trace = [(0.0, 0.0)]
        append = trace.append
        for a, t0, t1 in zip(prog, st, en, strict=True):
            kind = a.kind
            if kind is kind_f:
                held += add_f[a.stage]
                append((t0, held))
                if held > peak:
                    peak = held
            else:
                if rebuilt and kind is not kind_w and bump[a.stage]:  # B re-runs the forward
                    held += bump[a.stage]
                    append((t0, held))
                    peak = max(peak, held)
                held += (add_b if kind is kind_b else add_w if kind is kind_w else add_bw)[
                    a.stage
                ]
                append((t1, held))
        traces.append(tuple(trace))
        peaks.append(peak)
        # summing durations one by one keeps integer-valued times exact (no cancellation)
        busy.append(sum(map(operator.sub, en, st)))
        span.append(en[-1] - st[0] if prog else 0.0)
    makespan = max((en[-1] for en in ends if en), default=0.0)
    mean_busy = sum(busy) / len(busy)
    cost = max(span)
    reference = tab.reference
    whole = sum(mf for mf, _ in mem)
    return Simulation(
        schedule=schedule,
        starts=tuple(map(tuple, starts)),
        ends=tuple(map(tuple, ends)),
        memory=tuple(traces),
        peak_memory=tuple(peaks),
        busy=tuple(busy),
        span=tuple(span),
        makespan=makespan,
        bubble_rate=max(0.0, (cost - mean_busy) / cost) if cost > 0 else 0.0,
        bubble_rate_global=max(0.0, (makespan - mean_busy) / makespan) if makespan > 0 else 0.0,
        peak_fraction=max(peaks) / reference if reference > 0 else 0.0,
        reference_peak=reference,
        memory_unit=memory_unit(costs),
        stage_activation=whole / spec.num_stages,
    )

