"""Cost-aware W placement: keep each rank's F/B order, put its W's where the real gaps are.

A schedule built in unit slots (a repeated building block) places every W in a slot of its
own. Under real costs (F, B and W of different lengths, transfers) those slots are not where
the rank idles. :func:`refill_w` keeps every rank's order of F, B and BW passes and decides
anew where the W's go (see the note "W deferral" in :mod:`pipeblocks.ir`), list-executing the
pipeline with the real times:

- when the rank's next F or B can start now, it runs (F and B are on the critical path);
- when it cannot, the oldest pending W runs if the wait is at least ``slack`` times that W's
  length (``slack=0``: any wait; ``1``: only waits the W fits in);
- a W also runs whenever the next F would take the rank over its memory ``limit``.

No rank ever holds more than the limit it is given (the input schedule's own peak per rank
by default), and since W's free memory, the result never holds more than the input does.

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.sim import UniformCosts, simulate
    >>> costs = UniformCosts(f=3, b=4, w=2, comm=0.5)
    >>> s = generate("v-half", 4, 16)
    >>> simulate(refill_w(s, costs), costs).makespan < simulate(s, costs).makespan
    True
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence

from pipeblocks.blocks.lifespan import cap_tolerance, per_rank_caps
from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.schedule import Schedule
from pipeblocks.sim.costs import CostModel
from pipeblocks.sim.tables import Tables, tables

__all__ = ["refill_w", "program_peaks"]


def program_peaks(schedule: Schedule, tab: Tables) -> tuple[float, ...]:
    """Per rank, the most it holds running its program (memory depends only on the order):
    F allocates mem_f at its start; B frees mem_f - mem_w, W mem_w, BW mem_f at their ends."""
    add = {Pass.F: tab.mem_f,
           Pass.B: tuple(w - f for f, w in zip(tab.mem_f, tab.mem_w, strict=True)),
           Pass.W: tuple(-w for w in tab.mem_w), Pass.BW: tuple(-f for f in tab.mem_f)}
    peaks = []
    for prog in schedule.programs:
        held = peak = 0.0
        for a in prog:
            held += add[a.kind][a.stage]
            if held > peak:
                peak = held
        peaks.append(peak)
    return tuple(peaks)


def refill_w(
    schedule: Schedule,
    costs: CostModel,
    limit: float | Sequence[float] | None = None,
    slack: float = 1.0,
) -> Schedule:
    """``schedule`` with its W's moved to where each rank would otherwise wait (module docs).

    ``limit``: the most a rank may hold (one number or one per rank; default each rank's peak
    in ``schedule``). ``slack``: the shortest wait, in W lengths, worth filling with a W.
    """
    tab = tables(schedule.spec, costs)
    caps = per_rank_caps(limit, schedule.spec.num_ranks, lambda: program_peaks(schedule, tab),
                         "refill_w")
    run = _Refill(schedule, tab, caps, slack)
    run.run()
    return Schedule(schedule.spec, tuple(tuple(o) for o in run.out), schedule.name)


class _Refill:
    """The list execution behind :func:`refill_w`: ranks taken in time order from a heap of
    (free at, rank); ``end[(code * S + stage) * m + mb]`` (code 0 = F, 1 = B or BW, 2 = W) is
    each scheduled pass's end, -1 until then."""

    __slots__ = ("tab", "caps", "slack", "eps", "m", "nm", "last", "end", "seq", "out", "pos",
                 "clock", "held", "pending", "waiting", "heap", "f_t", "b_t", "w_t", "mem_f",
                 "mem_w")

    def __init__(self, schedule: Schedule, tab: Tables, caps: list[float], slack: float) -> None:
        spec = schedule.spec
        p, n, m = spec.num_ranks, spec.num_stages, spec.num_microbatches
        self.tab, self.caps, self.slack, self.eps = tab, caps, slack, cap_tolerance(caps)
        self.f_t, self.b_t, self.w_t = tab.f, tab.b, tab.w
        self.mem_f, self.mem_w = tab.mem_f, tab.mem_w
        self.m, self.nm, self.last = m, n * m, n - 1
        self.end = [-1.0] * (3 * n * m)
        self.seq = [[a for a in prog if a.kind is not Pass.W] for prog in schedule.programs]
        self.out: list[list[Action]] = [[] for _ in range(p)]
        self.pos = [0] * p
        self.clock = [0.0] * p
        self.held = [0.0] * p
        self.pending: list[deque[tuple[int, int]]] = [deque() for _ in range(p)]
        self.waiting: dict[int, list[int]] = {}
        self.heap = [(0.0, r) for r in range(p)]

    def run(self) -> None:
        """Take the rank that is free first; run its next F or B, or a W, or let it wait."""
        heap, clock, pos, seq, held = self.heap, self.clock, self.pos, self.seq, self.held
        pending, caps, eps, slack = self.pending, self.caps, self.eps, self.slack
        mem_f, f_t, b_t, w_t, end = self.mem_f, self.f_t, self.b_t, self.w_t, self.end
        m, nm, last, tab = self.m, self.nm, self.last, self.tab
        comm_act, comm_grad, rank_of = tab.comm_act, tab.comm_grad, tab.rank_of
        while heap:
            t, r = heapq.heappop(heap)
            if t != clock[r] or pos[r] > len(seq[r]):
                continue  # a stale entry
            if pos[r] == len(seq[r]):
                if pending[r]:
                    self._run_w(r, t)
                else:
                    pos[r] += 1  # done
                continue
            a = seq[r][pos[r]]
            if a.kind is Pass.F and held[r] + mem_f[a.stage] > caps[r] + eps:
                if not pending[r]:
                    raise SpecError(
                        f"refill_w: rank {r} cannot start {a} within its limit {caps[r]:g} "
                        f"(holds {held[r]:g}, no W left to run); raise the limit to the "
                        f"schedule's peak"
                    )
                self._run_w(r, t)
                continue
            # when can `a` start, as far as its dependencies are known? One not scheduled yet
            # cannot end before its rank is free and it has run.
            s, j = a.stage, a.mb
            ready, missing, bound = 0.0, -1, 0.0
            deps: list[tuple[int, float, float]] = []  # (index, transfer, its duration)
            if a.kind is Pass.F:
                if s > 0:
                    deps.append(((s - 1) * m + j, comm_act[s], f_t[s - 1]))
            else:
                deps.append((s * m + j, 0.0, f_t[s]))
                if s < last:
                    deps.append((nm + (s + 1) * m + j, comm_grad[s], b_t[s + 1]))
            for k, comm, d in deps:
                e = end[k]
                if e < 0:
                    missing = k
                    q = rank_of[(k % nm) // m]
                    bound = max(bound, max(clock[q], t) + d + comm)
                elif e + comm > ready:
                    ready = e + comm
            wait = (bound if missing >= 0 else ready) - t
            if pending[r] and wait > eps and wait >= slack * w_t[pending[r][0][0]] - eps:
                self._run_w(r, t)
            elif missing >= 0:
                self.waiting.setdefault(missing, []).append(r)
            else:
                pos[r] += 1
                self._start(r, a, max(t, ready))
        stuck = [r for r, (i, s) in enumerate(zip(pos, seq, strict=True))
                 if i <= len(s) and (i < len(s) or pending[r])]
        if stuck:
            raise SpecError(f"refill_w: ranks {stuck} cannot finish; the input schedule's F/B "
                            f"order is not executable (validate it)")

    def _start(self, r: int, a: Action, start: float) -> None:
        """Schedule ``a`` on rank r at ``start``; wake the ranks waiting for it."""
        held = self.held
        s, j = a.stage, a.mb
        if a.kind is Pass.F:
            held[r] += self.mem_f[s]
            fin, code = start + self.f_t[s], 0
        elif a.kind is Pass.W:
            fin, code = start + self.w_t[s], 2
            held[r] -= self.mem_w[s]
        else:
            fused = a.kind is Pass.BW
            fin, code = start + self.b_t[s] + (self.w_t[s] if fused else 0.0), 1
            held[r] -= self.mem_f[s] if fused else self.mem_f[s] - self.mem_w[s]
            if not fused:
                self.pending[r].append((s, j))
        k = (code * (self.last + 1) + s) * self.m + j
        self.end[k] = fin
        self.out[r].append(a)
        self.clock[r] = fin
        heap = self.heap
        heapq.heappush(heap, (fin, r))
        for q in self.waiting.pop(k, ()):
            heapq.heappush(heap, (self.clock[q], q))

    def _run_w(self, r: int, start: float) -> None:
        s, j = self.pending[r].popleft()
        self._start(r, Action(s, Pass.W, j), start)
