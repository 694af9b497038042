"""Bubble filling in the simulator: place a queue of small tasks in each rank's idle gaps.

A fill task (an evaluation batch, a step of a second small model) has an estimated duration
and the memory it needs while it runs. :func:`place_fill` walks each rank's gaps (the inner
bubbles of :func:`pipeblocks.sim.metrics.bubble_map`: between two passes) in time order and
puts the rank's queue into them first-fit, in queue order: a task goes in only if it ends
before the gap does (so no pass moves; the timeline stays the schedule's own) and its memory
fits what the rank has free in that gap. The result says what fraction of the bubble time the
fill uses, which tasks could not fit any gap (longer than every gap, or larger than every
gap's free memory) and, per rank, the *slots*: where fill may go, the data the executor's fill
hook (:mod:`pipeblocks.runtime.fill`) works from.

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.sim import simulate
    >>> sim = simulate(generate("1f1b", num_ranks=4, num_microbatches=8))
    >>> plan = place_fill(sim, [FillTask(1.5)] * 10 + [FillTask(4.0)])
    >>> plan.tasks_done, round(plan.bubble_used, 3), plan.too_long[2]   # rank 2's gaps: 2, 1
    (7, 0.583, (10,))

Lead and tail gaps (before a rank's first pass, after its last: the warm-up and cool-down
waits) count with ``edges=True``; the executor's fill uses them too (the lead before pass 0,
the tail at the program's end, bounded by the simulated step end).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeblocks.checks import expect
from pipeblocks.errors import SpecError
from pipeblocks.sim.engine import Simulation
from pipeblocks.sim.metrics import Bubble, BubbleKind, bubble_map

__all__ = ["FillTask", "FillSlot", "FillSpan", "FillPlan", "place_fill", "parse_fill"]


@dataclass(frozen=True, slots=True)
class FillTask:
    """A task of the fill queue: ``duration`` in the cost model's time unit, ``memory`` in its
    memory unit (held while the task runs, freed at its end)."""

    duration: float
    memory: float = 0.0
    name: str = "fill"

    def __post_init__(self) -> None:
        if not self.duration > 0 or not self.memory >= 0:
            raise SpecError(
                f"a fill task needs duration > 0 and memory >= 0 (got duration="
                f"{self.duration}, memory={self.memory}); e.g. FillTask(0.25, memory=0.1)")


@dataclass(frozen=True, slots=True)
class FillSlot:
    """Rank ``rank`` idles from ``start`` to ``end`` before its pass number ``before`` (its
    position in the rank's program; the program's length for the tail), ``free`` memory."""

    rank: int
    before: int
    start: float
    end: float
    free: float

    @property
    def length(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class FillSpan:
    """Task number ``task`` of the queue runs on ``rank`` from ``start`` to ``end``."""

    rank: int
    task: int
    name: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class FillPlan:
    """Where the fill queue goes. ``spans[r]``: rank r's fill tasks in time order;
    ``slots[r]``: its gaps; ``too_long[r]``: queue numbers of the tasks that fit no gap of
    rank r (never started); ``bubble[r]``: its idle time in the gaps considered."""

    spans: tuple[tuple[FillSpan, ...], ...]
    slots: tuple[tuple[FillSlot, ...], ...]
    too_long: tuple[tuple[int, ...], ...]
    bubble: tuple[float, ...]

    @property
    def tasks_done(self) -> int:
        return sum(len(r) for r in self.spans)

    @property
    def fill_time(self) -> float:
        return sum(s.end - s.start for r in self.spans for s in r)

    @property
    def bubble_used(self) -> float:
        """Fill time over bubble time, all ranks together (0 when there is no bubble)."""
        total = sum(self.bubble)
        return self.fill_time / total if total > 0 else 0.0


def _slots(bubbles: Sequence[Bubble], before: Sequence[int]) -> tuple[FillSlot, ...]:
    return tuple(FillSlot(b.rank, k, b.start, b.end, b.free)
                 for b, k in zip(bubbles, before, strict=True))


def _gaps(sim: Simulation, capacity: float | None, edges: bool) -> list[tuple[FillSlot, ...]]:
    """Per rank, the gaps fill may use, each with the index of the pass that follows it."""
    out = []
    for rank, bubbles in enumerate(bubble_map(sim, capacity)):
        starts = sim.starts[rank]
        keep, before = [], []
        for b in bubbles:
            if b.kind is not BubbleKind.INNER and not edges:
                continue
            keep.append(b)
            # the pass that starts where the gap ends; the tail's "next pass" is the end
            before.append(len(starts) if b.kind is BubbleKind.TAIL else starts.index(b.end))
        out.append(_slots(keep, before))
    return out


def _fill_rank(slots: Sequence[FillSlot], tasks: Sequence[FillTask], rank: int
               ) -> tuple[list[FillSpan], list[int]]:
    """First-fit in queue order: each gap takes queue tasks while the head one fits."""
    fits = [i for i, t in enumerate(tasks)
            if any(t.duration <= s.length and t.memory <= s.free for s in slots)]
    placeable = set(fits)
    never = [i for i in range(len(tasks)) if i not in placeable]
    queue = iter(fits)
    head = next(queue, None)
    spans: list[FillSpan] = []
    for slot in slots:
        t = slot.start
        while head is not None:
            task = tasks[head]
            if t + task.duration > slot.end + 1e-12 or task.memory > slot.free:
                break  # the head waits for a gap it fits (the queue keeps its order)
            spans.append(FillSpan(rank, head, task.name, t, t + task.duration))
            t += task.duration
            head = next(queue, None)
    return spans, never


def place_fill(sim: Simulation, tasks: Sequence[FillTask], *, capacity: float | None = None,
               edges: bool = False) -> FillPlan:
    """Place ``tasks`` (each rank's own copy of the queue) in the gaps of ``sim``.

    ``capacity`` is the memory per rank (default: the largest peak, see
    :func:`~pipeblocks.sim.metrics.bubble_map`); ``edges`` counts lead and tail gaps too.
    No pass moves: the fill only uses time the ranks idle anyway.
    """
    expect("place_fill", "sim", sim, Simulation)
    for t in tasks:
        expect("place_fill", "tasks[]", t, FillTask)
    gaps = _gaps(sim, capacity, edges)
    spans, never = [], []
    for rank, slots in enumerate(gaps):
        s, n = _fill_rank(slots, tasks, rank)
        spans.append(tuple(s))
        never.append(tuple(n))
    return FillPlan(spans=tuple(spans), slots=tuple(gaps), too_long=tuple(never),
                    bubble=tuple(sum(s.length for s in slots) for slots in gaps))


def parse_fill(text: str) -> list[FillTask]:
    """``DURATION[xCOUNT][@MEMORY]`` items, comma-separated: ``0.25x100`` is a hundred tasks of
    0.25 time units, ``0.5x10@0.2,2`` ten of 0.5 holding 0.2 each, then one of 2."""
    out: list[FillTask] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        body, _, mem = part.partition("@")
        dur, _, count = body.partition("x")
        try:
            task = FillTask(float(dur), float(mem) if mem else 0.0)
            n = int(count) if count else 1
        except ValueError:
            raise SpecError(f"--fill item {part!r} is not DURATION[xCOUNT][@MEMORY]; e.g. "
                            f"0.25x100 or 0.5x10@0.2") from None
        if n < 1:
            raise SpecError(f"--fill item {part!r}: COUNT must be >= 1 (got {n})")
        out.extend([task] * n)
    if not out:
        raise SpecError("--fill needs at least one task; e.g. --fill 0.25x100")
    return out
