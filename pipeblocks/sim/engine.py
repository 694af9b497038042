"""The event engine: when does every pass run, and how much memory does each rank hold?

Each rank runs its program in order, one pass at a time. A pass starts at the later of the
moment its rank is free and the end of each dependency, plus a transfer when the dependency ran
on another rank (the V turn is free: see :mod:`pipeblocks.ir`). One list execution
(:func:`pipeblocks.ir.deps.walk`) computes every time in O(actions).

    >>> from pipeblocks.generators import generate
    >>> sim = simulate(generate("1f1b", num_ranks=4, num_microbatches=8))
    >>> sim.makespan, round(sim.bubble_rate, 4), sim.peak_memory
    (33.0, 0.2727, (4.0, 3.0, 2.0, 1.0))
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeblocks.errors import DeadlockError, SpecError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.deps import key, walk
from pipeblocks.ir.schedule import Schedule
from pipeblocks.sim.costs import UNIT, CostModel

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

    - ``spans[r]``: rank r's passes in program order.
    - ``memory[r]``: ``(time, held)`` steps of rank r's activation memory, starting at (0, 0).
    - ``peak_memory[r]``: the most rank r holds at once (cost model's memory unit).
    - ``busy[r]``: time rank r computes; ``span[r]``: its last end minus its first start.
    - ``bubble_rate``: the papers' metric, (max span - busy) / max span, busy averaged over ranks.
    - ``bubble_rate_global``: (makespan - busy) / makespan, everyone starting at 0.
    - ``peak_fraction``: max peak over the whole model's activation for one microbatch (the sum
      of mem_f over all stages, which is 1F1B's peak when m >= p).
    """

    schedule: Schedule
    spans: tuple[tuple[Span, ...], ...]
    memory: tuple[tuple[tuple[float, float], ...], ...]
    peak_memory: tuple[float, ...]
    busy: tuple[float, ...]
    span: tuple[float, ...]
    makespan: float
    bubble_rate: float
    bubble_rate_global: float
    peak_fraction: float

    @property
    def idle(self) -> tuple[float, ...]:
        """Per rank: makespan minus busy time."""
        return tuple(self.makespan - b for b in self.busy)


def simulate(schedule: Schedule, costs: CostModel | None = None) -> Simulation:
    """Time ``schedule`` under ``costs`` (unit costs by default).

    Raises :class:`DeadlockError` if the programs cannot all finish (run the validator first
    for a precise message about a malformed schedule).
    """
    costs = UNIT if costs is None else costs
    spec = schedule.spec
    p = spec.num_ranks
    end: dict[Action, float] = {}
    free = [0.0] * p
    spans: list[list[Span]] = [[] for _ in range(p)]
    times: dict[tuple[int, Pass], float] = {}

    def duration(stage: int, kind: Pass) -> float:
        t = times.get((stage, kind))
        if t is None:
            t = float(costs.pass_time(spec, stage, kind))
            if not t >= 0:
                raise SpecError(f"pass time of stage {stage} {kind.value} is {t}; must be >= 0")
            times[(stage, kind)] = t
        return t

    def visit(rank: int, pos: int, action: Action, deps: tuple[tuple[int, Action], ...]) -> None:
        start = free[rank]
        for dep_rank, dep in deps:
            t = end[dep]
            if dep_rank != rank:
                t += costs.comm_time(spec, dep_rank, rank, dep.stage)
            if t > start:
                start = t
        finish = start + duration(action.stage, action.kind)
        free[rank] = finish
        end[key(action)] = finish
        spans[rank].append(Span(rank, action, start, finish))

    blocked = walk(schedule, visit)
    if blocked:
        heads = {b.rank: f"{b.action} (waits for {b.missing})" for b in blocked}
        text = "; ".join(f"rank {r}: {h}" for r, h in sorted(heads.items()))
        raise DeadlockError(f"schedule cannot finish: {text}", blocked=heads)
    return _measure(schedule, costs, tuple(tuple(s) for s in spans))


def _measure(
    schedule: Schedule, costs: CostModel, spans: tuple[tuple[Span, ...], ...]
) -> Simulation:
    spec = schedule.spec
    mem = {s: costs.memory(spec, s) for s in range(spec.num_stages)}
    traces, peaks, busy, span = [], [], [], []
    for rank_spans in spans:
        held, peak = 0.0, 0.0
        trace = [(0.0, 0.0)]
        for sp in rank_spans:
            mem_f, mem_w = mem[sp.action.stage]
            kind = sp.action.kind
            if kind is Pass.F:
                held += mem_f
                trace.append((sp.start, held))
                peak = max(peak, held)
            else:
                held -= {Pass.B: mem_f - mem_w, Pass.W: mem_w, Pass.BW: mem_f}[kind]
                trace.append((sp.end, held))
        traces.append(tuple(trace))
        peaks.append(peak)
        busy.append(sum(sp.end - sp.start for sp in rank_spans))
        span.append(rank_spans[-1].end - rank_spans[0].start if rank_spans else 0.0)
    makespan = max((rs[-1].end for rs in spans if rs), default=0.0)
    mean_busy = sum(busy) / len(busy)
    cost = max(span)
    whole = sum(mem[s][0] for s in mem)
    return Simulation(
        schedule=schedule,
        spans=spans,
        memory=tuple(traces),
        peak_memory=tuple(peaks),
        busy=tuple(busy),
        span=tuple(span),
        makespan=makespan,
        bubble_rate=(cost - mean_busy) / cost if cost > 0 else 0.0,
        bubble_rate_global=(makespan - mean_busy) / makespan if makespan > 0 else 0.0,
        peak_fraction=max(peaks) / whole if whole > 0 else 0.0,
    )
