"""Metrics beyond the :class:`~pipeblocks.sim.engine.Simulation` fields: the bubble map and a
JSON-ready summary.

The **bubble map** lists every idle interval of every rank with the memory it holds meanwhile
and what is free under a capacity: what a bubble filler (a deferred W, an extra F) needs to
know. Memory does not change while a rank is idle (F allocates at its start, the others free
at their end), so one number per interval says it all.

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.sim import simulate
    >>> sim = simulate(generate("1f1b", num_ranks=2, num_microbatches=2))
    >>> for b in bubble_map(sim)[0]:     # rank 0: F0 F1 BW0 BW1
    ...     print(b.kind.value, b.start, b.end, b.held, b.free)
    inner 2.0 4.0 2.0 0.0
    inner 6.0 7.0 1.0 1.0
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from pipeblocks.ir.lowering import transfers
from pipeblocks.sim.engine import Simulation

__all__ = ["BubbleKind", "Bubble", "bubble_map", "summary", "memory_at"]


class BubbleKind(enum.Enum):
    """Where an idle interval lies on its rank."""

    LEAD = "lead"  # from 0 to the rank's first pass (warm-up wait)
    INNER = "inner"  # between two passes
    TAIL = "tail"  # from the rank's last pass to the makespan (waiting for the slowest)


@dataclass(frozen=True, slots=True)
class Bubble:
    """Rank ``rank`` idles from ``start`` to ``end`` holding ``held``; ``free`` = capacity - held."""

    rank: int
    start: float
    end: float
    held: float
    free: float
    kind: BubbleKind

    @property
    def length(self) -> float:
        return self.end - self.start


def bubble_map(sim: Simulation, capacity: float | None = None) -> tuple[tuple[Bubble, ...], ...]:
    """Per rank, every idle interval, in time order.

    ``capacity`` is the memory each rank may hold (default: the largest peak over the ranks,
    which every device must have room for anyway). Intervals shorter than ``1e-9`` of the
    makespan are rounding noise of float times and are left out.
    """
    cap = max(sim.peak_memory, default=0.0) if capacity is None else float(capacity)
    eps = 1e-9 * sim.makespan
    out = []
    for rank, spans in enumerate(sim.spans):
        trace = sim.memory[rank]
        # memory after each pass: trace[k + 1] is written by the k-th pass
        held_after = [h for _, h in trace[1:]]
        bubbles = []
        t, held, kind = 0.0, 0.0, BubbleKind.LEAD
        for k, sp in enumerate(spans):
            if sp.start - t > eps:
                bubbles.append(Bubble(rank, t, sp.start, held, cap - held, kind))
            t, held, kind = sp.end, held_after[k], BubbleKind.INNER
        if sim.makespan - t > eps:
            bubbles.append(Bubble(rank, t, sim.makespan, held, cap - held, BubbleKind.TAIL))
        out.append(tuple(bubbles))
    return tuple(out)


def memory_at(sim: Simulation, rank: int, time: float) -> float:
    """What ``rank`` holds just after ``time`` (steps take effect at their time)."""
    held = 0.0
    for t, h in sim.memory[rank]:
        if t > time:
            break
        held = h
    return held


def summary(sim: Simulation) -> dict[str, Any]:
    """The metrics as one JSON-ready dict (what ``pipeblocks simulate --json`` prints)."""
    spec = sim.schedule.spec
    return {
        "name": sim.schedule.name,
        "num_ranks": spec.num_ranks,
        "num_microbatches": spec.num_microbatches,
        "stages_per_rank": spec.stages_per_rank,
        "placement": spec.placement.value,
        "num_passes": sim.schedule.num_actions,
        "makespan": sim.makespan,
        "bubble_rate": sim.bubble_rate,
        "bubble_rate_global": sim.bubble_rate_global,
        "peak_memory": list(sim.peak_memory),
        "peak_stage_activations": list(sim.peak_stage_activations),
        "memory_unit": sim.memory_unit,
        "peak_fraction": sim.peak_fraction,
        "reference_peak": sim.reference_peak,
        "busy": list(sim.busy),
        "idle": list(sim.idle),
        "span": list(sim.span),
        "p2p_transfers": transfers(sim.schedule),
    }
