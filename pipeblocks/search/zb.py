"""The Zero Bubble paper's memory-limited heuristic, with the real costs (loop placement, v = 1).

Qi, Wan, Huang, Lin 2024, *Zero Bubble Pipeline Parallelism* (arXiv 2401.10241, section 3.1;
docs/design.md, "The memory-limited search"). Every rank list-executes its own decisions with
the cost model's times, one pass at a time, never holding more than ``limit``:

- warm-up (before the rank's first B): F's while they fit in memory; with ``warmup="tight"``
  only those that end before the first B can come back (they do not delay it); with
  ``"depth"`` at most c·(p-1-r) + 1 on rank r, where c = (limit / mem_f - 1) / (p - 1) is 1
  at 1F1B's memory (ZB-H1's warm-up) and 2 at 2p - 1 activations (ZB-H2's);
- steady phase: one F and one B in turn (the B as soon as its gradient is back);
- a rank that would idle runs its oldest pending W when the wait is at least ``slack`` times
  the W (``slack=0``: whenever it would idle), and whenever the next F does not fit in memory
  (a W frees what it holds); the W's left at the end close the program.

How long a rank would wait comes from the schedule built so far: the pass's inputs when they
are placed, else the shortest chain of passes and transfers that must still run before them.
With ``limit`` = p activations (1F1B's peak) this is ZB-1P, with 2p ZB-2P. The W's go where
the real timeline has gaps, so the result depends on the costs, not only on p.

    >>> from pipeblocks.ir import PipelineSpec
    >>> from pipeblocks.sim import UniformCosts, simulate
    >>> s = zb_memory_limited(PipelineSpec(3, 4), UniformCosts(), limit=3, warmup="depth")
    >>> print(s)                  # at 1F1B's memory with unit costs: ZB-H1 itself
    rank 0 | F0 F1 F2 B0 W0 F3 B1 W1 B2 W2 B3 W3
    rank 1 | F0 F1 B0 F2 B1 W0 F3 B2 W1 B3 W2 W3
    rank 2 | F0 B0 F1 B1 F2 B2 W0 F3 B3 W1 W2 W3
    >>> simulate(s).bubble_rate   # ZB-H1's (p-1)/(3m+p-1)
    0.14285714285714285
"""

from __future__ import annotations

import heapq
from collections import deque
from itertools import accumulate

from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import PipelineSpec, Placement
from pipeblocks.sim.costs import CostModel
from pipeblocks.sim.tables import tables

__all__ = ["zb_memory_limited", "zb_smallest_limit", "WARMUPS"]

WARMUPS = ("fill", "tight", "depth")
"""Warm-up rules: F's up to the memory limit; only those that do not delay the first B; or
ZB-H1/H2's depth, c·(p-1-r) + 1 on rank r with c = (limit / mem_f - 1) / (p - 1)."""


def zb_smallest_limit(spec: PipelineSpec, costs: CostModel) -> float:
    """The least memory a rank needs under the loop placement: one activation of its stage."""
    return max(tables(spec, costs).mem_f)


def zb_memory_limited(
    spec: PipelineSpec,
    costs: CostModel,
    limit: float,
    slack: float = 1.0,
    warmup: str = "fill",
) -> Schedule:
    """The heuristic's schedule for ``spec`` (loop placement, one stage per rank) under
    ``costs``, never holding more than ``limit`` (the cost model's memory unit) on any rank."""
    if spec.placement is not Placement.LOOP or spec.stages_per_rank != 1:
        raise SpecError(f"the ZB heuristic needs placement 'loop' with one stage per rank (got "
                        f"{spec.describe()}); use PipelineSpec(p, m)")
    if warmup not in WARMUPS:
        raise SpecError(f"unknown warm-up rule {warmup!r}; use one of: {', '.join(WARMUPS)}")
    return _Greedy(spec, costs, limit, slack, warmup).run()


class _Greedy:
    """The bookkeeping of one run: rank r runs stage r; microbatch j's passes by index."""

    def __init__(self, spec: PipelineSpec, costs: CostModel, limit: float, slack: float,
                 warmup: str) -> None:
        tab = tables(spec, costs)
        self.p, self.m = p, m = spec.num_ranks, spec.num_microbatches
        self.spec, self.tab, self.slack, self.tight = spec, tab, slack, warmup == "tight"
        # warm-up F's allowed on each rank (the memory limit bounds them too)
        self.warm = [m] * p
        if warmup == "depth" and p > 1:
            for r in range(p):
                c = (limit / tab.mem_f[r] - 1) / (p - 1) if tab.mem_f[r] > 0 else float(m)
                self.warm[r] = max(1, min(m, int(c * (p - 1 - r) + 1e-9) + 1))
        need = max(tab.mem_f)
        self.eps = 1e-9 * max(1.0, abs(limit), need)
        if limit + self.eps < need:
            raise SpecError(f"the ZB heuristic needs a memory limit of at least {need:g} (one "
                            f"activation of the heaviest stage); got {limit:g}")
        self.limit = limit
        # chain sums: reaching stage r's F from stage q's F end takes fwd[r] - fwd[q+1] plus the
        # transfer into r; going down the gradients from stage u to stage r likewise
        self.fwd = [0.0, *accumulate(tab.comm_act[u] + tab.f[u] for u in range(p))]
        self.bwd = [0.0, *accumulate(tab.comm_grad[u] + tab.b[u] for u in range(p))]
        self.f_end = [[-1.0] * m for _ in range(p)]
        self.b_end = [[-1.0] * m for _ in range(p)]
        self.f_far = [-1] * m  # the last stage whose F of microbatch j is placed
        self.b_near = [p] * m  # the first stage whose B of microbatch j is placed
        self.out: list[list[Action]] = [[] for _ in range(p)]
        self.nf, self.nb = [0] * p, [0] * p
        self.clock, self.held = [0.0] * p, [0.0] * p
        self.last_f = [False] * p
        self.pending: list[deque[int]] = [deque() for _ in range(p)]
        self.waiting: dict[tuple[int, int, int], list[int]] = {}  # (kind 0 F/1 B, rank, mb)
        self.heap = [(0.0, r) for r in range(p)]

    # -- when could a pass start? -------------------------------------------------------------
    def f_ready(self, r: int, j: int) -> tuple[float, bool]:
        """(time, exact): when F(r, j)'s input arrives; a lower bound when not exact."""
        tab = self.tab
        if r == 0:
            return 0.0, True
        if self.f_end[r - 1][j] >= 0:
            return self.f_end[r - 1][j] + tab.comm_act[r], True
        q = self.f_far[j]
        if q >= 0:
            base = self.f_end[q][j]
        else:  # not even started: stage 0 runs it no earlier than its rank is free
            q, base = 0, self.clock[0] + tab.f[0]
        # F's of stages q+1 .. r-1 and the transfers up to r
        return base + self.fwd[r] - self.fwd[q + 1] + tab.comm_act[r], False

    def b_ready(self, r: int, j: int) -> tuple[float, bool]:
        """(time, exact): when B(r, j) may start (its F has run); a lower bound when not exact."""
        tab, p = self.tab, self.p
        own = self.f_end[r][j]
        if r == p - 1:
            return own, True
        if self.b_end[r + 1][j] >= 0:
            return max(own, self.b_end[r + 1][j] + tab.comm_grad[r]), True
        u = self.b_near[j]
        if u < p:  # B's of stages r+1 .. u-1 are still to run
            base = self.b_end[u][j] + self.bwd[u] - self.bwd[r + 1]
        else:  # the F's up to the last stage, then every B back to r+1
            q = self.f_far[j]
            base = (self.f_end[q][j] + self.fwd[p] - self.fwd[q + 1]
                    + self.bwd[p] - self.bwd[r + 1] - tab.comm_grad[p - 1])
        return max(own, base + tab.comm_grad[r]), False

    # -- placing passes ------------------------------------------------------------------------
    def place(self, r: int, kind: Pass, j: int, start: float) -> None:
        tab = self.tab
        if kind is Pass.F:
            fin = start + tab.f[r]
            self.held[r] += tab.mem_f[r]
            self.f_end[r][j] = fin
            self.f_far[j] = r
            self.nf[r] += 1
            self.last_f[r] = True
            key = (0, r, j)
        elif kind is Pass.B:
            fin = start + tab.b[r]
            self.held[r] -= tab.mem_f[r] - tab.mem_w[r]
            self.b_end[r][j] = fin
            self.b_near[j] = r
            self.nb[r] += 1
            self.last_f[r] = False
            self.pending[r].append(j)
            key = (1, r, j)
        else:
            fin = start + tab.w[r]
            self.held[r] -= tab.mem_w[r]
            key = (2, r, j)
        self.out[r].append(Action(r, kind, j))
        self.clock[r] = fin
        heapq.heappush(self.heap, (fin, r))
        for q in self.waiting.pop(key, ()):
            heapq.heappush(self.heap, (self.clock[q], q))

    def run(self) -> Schedule:
        p, m = self.p, self.m
        done = [False] * p
        # A rank that could start a pass later but waits to see whether another comes earlier
        # parks it here; if every rank ends up waiting, the earliest parked pass runs.
        parked: dict[int, tuple[float, Pass, int]] = {}
        while self.heap or parked:
            if not self.heap:
                r = min(parked, key=lambda q: (parked[q][0], q))
                start, kind, j = parked.pop(r)
                self.place(r, kind, j, start)
                continue
            t, r = heapq.heappop(self.heap)
            if done[r] or t != self.clock[r]:
                continue
            parked.pop(r, None)
            if self.nf[r] == m and self.nb[r] == m:
                if self.pending[r]:
                    self.place(r, Pass.W, self.pending[r].popleft(), t)
                else:
                    done[r] = True
                continue
            self.decide(r, t, parked)
        if not all(done):
            stuck = [r for r in range(p) if not done[r]]
            raise SpecError(f"the ZB heuristic could not finish ranks {stuck} under memory "
                            f"limit {self.limit:g}; raise the limit")
        return Schedule(self.spec, tuple(tuple(o) for o in self.out), "")

    def decide(self, r: int, t: float, parked: dict[int, tuple[float, Pass, int]]) -> None:
        """Rank r is free at t: place its next pass, or wait for news from another rank."""
        tab, m, eps = self.tab, self.m, self.eps
        options: list[tuple[float, bool, Pass, int]] = []  # (ready, exact, kind, mb)
        full = self.nf[r] < m and self.held[r] + tab.mem_f[r] > self.limit + eps
        fits = self.nf[r] < m and not full
        if fits:
            ready, known = self.f_ready(r, self.nf[r])
            if self.nb[r] == 0 and self.nf[r] >= self.warm[r]:
                fits = False
            elif self.tight and self.nb[r] == 0 and self.nf[r] > 0:
                # warm-up: an F that would end after the first B could start delays it
                first_b, _ = self.b_ready(r, 0)
                if max(t, ready) + tab.f[r] > first_b + eps:
                    fits = False
            if fits:
                options.append((ready, known, Pass.F, self.nf[r]))
        if self.nb[r] < self.nf[r]:
            ready, known = self.b_ready(r, self.nb[r])
            options.append((ready, known, Pass.B, self.nb[r]))
        now = [o for o in options if o[1] and o[0] <= t + eps]
        if now:
            if len(now) == 2:  # steady phase: F and B in turn
                kind = Pass.B if self.last_f[r] else Pass.F
                now = [o for o in now if o[2] is kind]
            self.place(r, now[0][2], now[0][3], t)
            return
        pending = self.pending[r]
        soonest = min((o[0] for o in options), default=float("inf"))
        if pending and (full or soonest - t >= self.slack * tab.w[r] - eps):
            self.place(r, Pass.W, pending.popleft(), t)
            return
        exact = [o for o in options if o[1]]
        guesses = [o for o in options if not o[1]]
        if exact and (not guesses or min(o[0] for o in exact) <= min(o[0] for o in guesses)):
            first = min(exact, key=lambda o: (o[0], o[2] is not Pass.B))
            self.place(r, first[2], first[3], first[0])
            return
        if not guesses:
            raise SpecError(f"the ZB heuristic is stuck on rank {r} (limit {self.limit:g}, "
                            f"holds {self.held[r]:g}); raise the memory limit")
        if exact:
            first = min(exact, key=lambda o: (o[0], o[2] is not Pass.B))
            parked[r] = (first[0], first[2], first[3])
        for o in guesses:
            key = (0, r - 1, o[3]) if o[2] is Pass.F else (1, r + 1, o[3])
            self.waiting.setdefault(key, []).append(r)
