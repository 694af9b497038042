"""What offload costs the simulator: copies on each rank's host link, device and host memory.

For each offloaded pair of ``schedule.offload`` (:mod:`pipeblocks.ir.offload`):

- ``OFFLOAD`` starts when its F ends (and the rank's device-to-host queue is free) and takes
  ``link.seconds(amount)``; ``amount`` is what the F holds minus the stage input, which stays
  (the next stage's input buffer and B's gradient target; 0 with the ``unit`` preset, see
  :func:`pipeblocks.sim.recompute.input_memory`). Device memory drops by ``amount`` when it
  ends; host memory grows by ``amount`` when it starts.
- ``RELOAD`` starts at the start of the pass before the pair's B, once the offload ended and
  the host-to-device queue is free; device memory grows by ``amount`` when it starts, host
  memory drops when it ends. The B (or BW) starts no earlier than the reload's end.
- The two directions are separate queues (a full-duplex link). With ``link.shared`` one queue
  per rank carries both directions and the rank's outgoing pipeline transfers: a transfer
  leaves when its pass ended and the queue is free.

Compute never waits for an OFFLOAD: the copies overlap compute, and only a late RELOAD delays
its B. Without offload this timing equals the engine's (the tests check it).

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.ir.offload import with_offload
    >>> from pipeblocks.ir.moves import OffloadLink
    >>> from pipeblocks.sim import simulate
    >>> fast, slow = (simulate(with_offload(generate("1f1b", 4, 8), link=OffloadLink(bw)))
    ...               for bw in (4.0, 0.25))
    >>> fast.peak_memory, fast.makespan, fast.host_peak     # plain: (4, 3, 2, 1), 33
    ((3.0, 3.0, 2.0, 1.0), 33.0, (3.0, 2.0, 1.0, 0.0))
    >>> slow.makespan                     # each copy takes 4 F: the reloads come late
    58.0
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeblocks.errors import DeadlockError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.deps import key, walk
from pipeblocks.ir.moves import Move, MoveKind
from pipeblocks.ir.offload import reload_after
from pipeblocks.ir.schedule import Schedule
from pipeblocks.sim.costs import CostModel
from pipeblocks.sim.recompute import input_memory, rebuild_memory
from pipeblocks.sim.tables import Tables

__all__ = ["MoveSpan", "OffloadRun", "offload_amounts", "run_offload"]

Trace = tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True)
class MoveSpan:
    """One copy on a rank's host link."""

    rank: int
    move: Move
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class OffloadRun:
    """The times of every pass (as the engine's ``starts``/``ends``), the copies, and per rank
    the device trace and peak and the host trace and peak."""

    starts: list[list[float]]
    ends: list[list[float]]
    moves: tuple[tuple[MoveSpan, ...], ...]
    memory: tuple[Trace, ...]
    peaks: tuple[float, ...]
    host: tuple[Trace, ...]
    host_peaks: tuple[float, ...]


def offload_amounts(schedule: Schedule, costs: CostModel, tab: Tables) -> list[float]:
    """Per stage: what an OFFLOAD of one microbatch moves (F's hold minus the stage input)."""
    hold, _ = rebuild_memory(schedule, costs, tab)
    return [max(0.0, hold[s] - input_memory(costs, schedule.spec, s))
            for s in range(schedule.spec.num_stages)]


class _Clock:
    """The timed list execution with the host link (see the module)."""

    def __init__(self, schedule: Schedule, tab: Tables, amounts: list[float]) -> None:
        assert schedule.offload is not None
        p = schedule.spec.num_ranks
        self.schedule, self.tab, self.amounts = schedule, tab, amounts
        self.pairs, self.link = schedule.offload.pairs, schedule.offload.link
        self.before = {a: k for k, a in reload_after(schedule).items()}
        self.dur = {Pass.F: tab.f, Pass.B: tab.b, Pass.W: tab.w, Pass.BW: tab.bw}
        self.free = [0.0] * p
        self.d2h, self.h2d = [0.0] * p, [0.0] * p  # when each queue is free
        self.end: dict[Action, float] = {}
        self.arrive: dict[Action, float] = {}  # shared link: when a sent output arrives
        self.offloaded: dict[tuple[int, int], float] = {}
        self.reloaded: dict[tuple[int, int], float] = {}
        self.starts: list[list[float]] = [[] for _ in range(p)]
        self.ends: list[list[float]] = [[] for _ in range(p)]
        self.moves: list[list[MoveSpan]] = [[] for _ in range(p)]

    def _copy(self, rank: int, kind: MoveKind, pair: tuple[int, int], ready: float) -> float:
        queue = self.d2h if kind is MoveKind.OFFLOAD or self.link.shared else self.h2d
        t0 = max(ready, queue[rank])
        t1 = t0 + self.link.seconds(self.amounts[pair[0]])
        queue[rank] = t1
        self.moves[rank].append(MoveSpan(rank, Move(kind, *pair), t0, t1))
        return t1

    def visit(self, rank: int, pos: int, a: Action, deps: tuple[tuple[int, Action], ...]) -> None:
        tab, start = self.tab, self.free[rank]
        for dr, d in deps:
            if dr == rank:
                e = self.end[d]
            elif d in self.arrive:
                e = self.arrive[d]
            else:
                e = self.end[d] + (tab.comm_act[a.stage] if d.kind is Pass.F
                                   else tab.comm_grad[a.stage])
            start = max(start, e)
        pair = (a.stage, a.mb)
        if a.kind.frees_input_grad and pair in self.reloaded:
            start = max(start, self.reloaded[pair])
        nxt = self.before.get(a)
        if nxt is not None:  # this pass comes right before an offloaded B: post its reload
            self.reloaded[nxt] = self._copy(rank, MoveKind.RELOAD, nxt,
                                            max(start, self.offloaded[nxt]))
        fin = start + self.dur[a.kind][a.stage]
        self.starts[rank].append(start)
        self.ends[rank].append(fin)
        self.free[rank] = fin
        self.end[key(a)] = fin
        if self.link.shared:
            self._send(rank, a, fin)
        if a.kind is Pass.F and pair in self.pairs:
            self.offloaded[pair] = self._copy(rank, MoveKind.OFFLOAD, pair, fin)

    def _send(self, rank: int, a: Action, fin: float) -> None:
        """Shared link: the pass's outgoing transfer waits for the rank's queue."""
        tab, s = self.tab, a.stage
        if a.kind is Pass.F and s + 1 < len(tab.rank_of) and tab.rank_of[s + 1] != rank:
            comm = tab.comm_act[s + 1]
        elif a.kind.frees_input_grad and s > 0 and tab.rank_of[s - 1] != rank:
            comm = tab.comm_grad[s - 1]
        else:
            return
        t0 = max(fin, self.d2h[rank])
        self.d2h[rank] = self.arrive[key(a)] = t0 + comm


def run_offload(schedule: Schedule, costs: CostModel, tab: Tables) -> OffloadRun:
    """Time ``schedule`` (with ``schedule.offload`` set) and account its memory."""
    amounts = offload_amounts(schedule, costs, tab)
    clock = _Clock(schedule, tab, amounts)
    blocked = walk(schedule, clock.visit)
    if blocked:
        heads = {b.rank: f"{b.action} (waits for {b.missing})" for b in blocked}
        raise DeadlockError(f"schedule {schedule.name or '(unnamed)'} cannot finish: {heads}",
                            blocked=heads)
    add_f, bump = rebuild_memory(schedule, costs, tab)
    mem = list(zip(tab.mem_f, tab.mem_w, strict=True))
    memory, peaks, host, host_peaks = [], [], [], []
    for r, prog in enumerate(schedule.programs):
        dev: list[tuple[float, float]] = []
        for a, t0, t1 in zip(prog, clock.starts[r], clock.ends[r], strict=True):
            mf, mw = mem[a.stage]
            if a.kind is Pass.F:
                dev.append((t0, add_f[a.stage]))
                continue
            if a.kind is not Pass.W and bump[a.stage]:
                dev.append((t0, bump[a.stage]))
            dev.append((t1, {Pass.B: mw - mf, Pass.W: -mw, Pass.BW: -mf}[a.kind]))
        hst: list[tuple[float, float]] = []
        for mv in clock.moves[r]:
            amt = amounts[mv.move.stage]
            if mv.move.kind is MoveKind.OFFLOAD:
                dev.append((mv.end, -amt))
                hst.append((mv.start, amt))
            else:
                dev.append((mv.start, amt))
                hst.append((mv.end, -amt))
        trace, peak = _steps(dev)
        memory.append(trace)
        peaks.append(peak)
        trace, peak = _steps(hst, frees_first=False)  # each pair's +/- in causal order
        host.append(trace)
        host_peaks.append(peak)
    return OffloadRun(clock.starts, clock.ends, tuple(map(tuple, clock.moves)), tuple(memory),
                      tuple(peaks), tuple(host), tuple(host_peaks))


def _steps(events: list[tuple[float, float]], frees_first: bool = True
           ) -> tuple[Trace, float]:
    """``(time, held)`` steps from ``(time, change)`` events and the peak. At equal times the
    frees come first (as the engine's program order has a pass end before the next starts),
    or, for host memory, the events keep their order (a pair's copy out before its copy back,
    which an instant link puts at one time)."""
    held = peak = 0.0
    trace = [(0.0, 0.0)]
    for t, d in sorted(events) if frees_first else sorted(events, key=lambda e: e[0]):
        held += d
        peak = max(peak, held)
        trace.append((t, held))
    return tuple(trace), peak
