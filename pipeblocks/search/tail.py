"""Re-plan the cool-down by the critical path, with the real costs and a memory limit.

A repeated block keeps its stable-phase order to the end, but once a rank has run its last
chunk-0 F the order that drains the pipeline fastest is a different one: the passes that many
others still wait for should go first. :func:`replan_tail` keeps each rank's program up to a
cut (by default just after the rank's last F of its first local stage, :func:`last_f_cut`) and
list-schedules everything after it, with the cost model's times:

- the pass that can start earliest, over all ranks, is placed first (a discrete-event run);
- among a rank's passes that can start at that moment, the one with the longest *tail* goes
  first: its own time plus the longest chain of passes and transfers that wait for it (a B of
  the last stage heads the whole chain of B's back to stage 0; a W heads nothing);
- an F starts only if the rank stays within ``limit``.

The CM paper re-plans the cool-down too (Qi, Wan, Amar, Lin 2024, arXiv 2405.15362, section
4); its rule is written for unit passes, this one for any costs. The search keeps the result
only when it is faster (it is another candidate).

    >>> from pipeblocks.blocks import build
    >>> from pipeblocks.search.vshape import VParams, v_block_of
    >>> from pipeblocks.sim import simulate
    >>> s = build(v_block_of(8, VParams(f1=1, b1=2, b0=5, k0=3, k1=1, split=4)), 32)
    >>> simulate(s).makespan, simulate(replan_tail(s, limit=11)).makespan
    (104.0, 103.0)
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from pipeblocks.blocks.lifespan import cap_tolerance, per_rank_caps
from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.schedule import Schedule
from pipeblocks.search.refill import program_peaks
from pipeblocks.sim.costs import UNIT, CostModel
from pipeblocks.sim.engine import Simulation
from pipeblocks.sim.tables import Tables, tables

__all__ = ["replan_tail", "last_f_cut", "tails"]


def last_f_cut(schedule: Schedule, back: int = 0) -> list[int]:
    """Per rank, the position just after its last F of its first local stage (chunk 0), or
    just after the F ``back`` microbatches before it."""
    spec = schedule.spec
    cut = []
    for r, prog in enumerate(schedule.programs):
        first = spec.stages_of(r)[0]
        ends = [i + 1 for i, a in enumerate(prog) if a.kind is Pass.F and a.stage == first]
        cut.append(ends[max(0, len(ends) - 1 - back)] if ends else 0)
    return cut


def tails(tab: Tables) -> dict[Pass, list[float]]:
    """Per kind and stage: the pass's time plus the longest chain that waits for it.

    B(s) heads B(s-1) (after a transfer when they are on different ranks) and its own W;
    F(s) heads F(s+1) and B(s); a W heads nothing.
    """
    n = tab.spec.num_stages
    b_tail = [0.0] * n
    for s in range(n):
        below = b_tail[s - 1] + tab.comm_grad[s - 1] if s > 0 else 0.0
        b_tail[s] = tab.b[s] + max(tab.w[s], below)
    f_tail = [0.0] * n
    for s in range(n - 1, -1, -1):
        above = f_tail[s + 1] + tab.comm_act[s + 1] if s < n - 1 else 0.0
        f_tail[s] = tab.f[s] + max(above, b_tail[s])
    bw_tail = [tab.w[s] + b_tail[s] for s in range(n)]  # BW: B and W back to back
    return {Pass.F: f_tail, Pass.B: b_tail, Pass.W: list(tab.w), Pass.BW: bw_tail}


def replan_tail(
    schedule: Schedule,
    costs: CostModel | None = None,
    limit: float | Sequence[float] | None = None,
    cut: Sequence[int] | None = None,
    stop: Sequence[int] | None = None,
    simulation: Simulation | None = None,
) -> Schedule:
    """``schedule`` with every rank's passes from ``cut[r]`` to ``stop[r]`` (default: to the
    end) re-ordered (module docs); the passes after ``stop[r]`` keep their order.

    ``limit``: the most a rank may hold (one number or one per rank; default each rank's peak
    in ``schedule``). ``cut``: positions per rank (default :func:`last_f_cut`).
    ``simulation``: ``schedule`` simulated under ``costs``, if at hand: every pass that starts
    before the first re-ordered pass could start keeps its time, so the run starts there.
    """
    costs = UNIT if costs is None else costs
    spec = schedule.spec
    tab = tables(spec, costs)
    p = spec.num_ranks
    caps = per_rank_caps(limit, p, lambda: program_peaks(schedule, tab), "replan_tail")
    cut = last_f_cut(schedule) if cut is None else list(cut)
    stop = [len(prog) for prog in schedule.programs] if stop is None else list(stop)
    if len(cut) != p or len(stop) != p:
        raise SpecError(f"replan_tail needs one cut and one stop per rank ({p}), got "
                        f"{len(cut)} and {len(stop)}")
    run = _Run(schedule, tab, caps, cut, stop)
    if simulation is not None and simulation.schedule.programs == schedule.programs:
        run.skip_to(simulation, cut)
    return run.run()


class _Run:
    """One discrete-event run; a pass's key is (code, stage, mb), code 0 F, 1 B/BW, 2 W."""

    def __init__(self, schedule: Schedule, tab: Tables, caps: list[float],
                 cut: list[int], stop: list[int]) -> None:
        self.schedule, self.tab, self.caps = schedule, tab, caps
        spec = schedule.spec
        self.p, self.n = spec.num_ranks, spec.num_stages
        self.eps = cap_tolerance(caps)
        self.prefix = [list(prog[:c]) for prog, c in zip(schedule.programs, cut, strict=True)]
        self.suffix = [list(prog[e:]) for prog, e in zip(schedule.programs, stop, strict=True)]
        self.spos = [0] * self.p
        self.tail = tails(tab)
        self.end: dict[tuple[int, int, int], float] = {}
        self.clock = [0.0] * self.p
        self.held = [0.0] * self.p
        self.pos = [0] * self.p
        self.out: list[list[Action]] = [[] for _ in range(self.p)]
        # pool passes by rank: waiting on an unplaced input, or ready at a known time
        self.waiting: dict[tuple[int, int, int], list[tuple[int, Action]]] = {}
        self.ready: list[list[tuple[float, float, int, int, Action]]] = [[] for _ in
                                                                           range(self.p)]
        self.prefix_wait: dict[tuple[int, int, int], set[int]] = {}
        self.pool_left = [e - c for e, c in zip(stop, cut, strict=True)]
        for r, prog in enumerate(schedule.programs):
            for a in prog[cut[r]:stop[r]]:
                self._enlist(r, a)

    def skip_to(self, sim: Simulation, cut: list[int]) -> None:
        """Take the simulated times of every prefix pass that starts before any rank reaches
        its cut: no re-ordered pass can start before that, so nothing before it changes."""
        t0 = min((sim.spans[r][c - 1].end if c > 0 else 0.0)
                 for r, c in enumerate(cut) if self.pool_left[r] > 0) \
            if any(self.pool_left) else float("inf")
        tab = self.tab
        for r, spans in enumerate(sim.spans):
            k = 0
            while k < len(self.prefix[r]) and spans[k].start < t0:
                a, sp = self.prefix[r][k], spans[k]
                code = 0 if a.kind is Pass.F else 2 if a.kind is Pass.W else 1
                self.end[(code, a.stage, a.mb)] = sp.end
                self.held[r] += (tab.mem_f[a.stage] if a.kind is Pass.F else
                                 -tab.mem_w[a.stage] if a.kind is Pass.W else
                                 tab.mem_w[a.stage] - tab.mem_f[a.stage] if a.kind is Pass.B
                                 else -tab.mem_f[a.stage])
                k += 1
            if k:
                self.clock[r] = spans[k - 1].end
                self.out[r].extend(self.prefix[r][:k])
                self.pos[r] = k
        # pool passes whose inputs are now known
        waiting, self.waiting = self.waiting, {}
        for entries in waiting.values():
            for r, a in entries:
                self._enlist(r, a)

    def _deps(self, a: Action) -> list[tuple[tuple[int, int, int], float]]:
        s, j, tab = a.stage, a.mb, self.tab
        if a.kind is Pass.F:
            return [((0, s - 1, j), tab.comm_act[s])] if s > 0 else []
        if a.kind is Pass.W:
            return [((1, s, j), 0.0)]
        deps = [((0, s, j), 0.0)]
        if s < self.n - 1:
            deps.append(((1, s + 1, j), tab.comm_grad[s]))
        return deps

    def _ready_at(self, a: Action) -> tuple[float, tuple[int, int, int] | None]:
        t = 0.0
        for key, comm in self._deps(a):
            e = self.end.get(key)
            if e is None:
                return t, key
            t = max(t, e + comm)
        return t, None

    def _enlist(self, r: int, a: Action) -> None:
        t, missing = self._ready_at(a)
        if missing is not None:
            self.waiting.setdefault(missing, []).append((r, a))
        else:
            self.ready[r].append((t, -self.tail[a.kind][a.stage], a.mb, a.stage, a))

    def _choice(self, r: int) -> tuple[float, Action, bool] | None:
        """(start, pass, from the prefix) for rank r now, or None while it must wait."""
        if self.pos[r] < len(self.prefix[r]):
            a = self.prefix[r][self.pos[r]]
            t, missing = self._ready_at(a)
            if missing is not None:
                self.prefix_wait.setdefault(missing, set()).add(r)
                return None
            return max(t, self.clock[r]), a, True
        if self.pool_left[r] == 0:
            if self.spos[r] == len(self.suffix[r]):
                return None
            a = self.suffix[r][self.spos[r]]
            t, missing = self._ready_at(a)
            if missing is not None:
                self.prefix_wait.setdefault(missing, set()).add(r)
                return None
            return max(t, self.clock[r]), a, True
        tab, held, cap = self.tab, self.held[r], self.caps[r] + self.eps
        fits = [x for x in self.ready[r] if x[4].kind is not Pass.F
                or held + tab.mem_f[x[4].stage] <= cap]
        if not fits:
            return None
        start = max(self.clock[r], min(x[0] for x in fits))
        best = min((x for x in fits if x[0] <= start + self.eps), key=lambda x: x[1:4])
        return start, best[4], False

    def _fixed(self, r: int) -> bool:
        """Whether rank r runs a fixed order now (its prefix, or its suffix after the pool)."""
        return self.pos[r] < len(self.prefix[r]) or self.pool_left[r] == 0

    def run(self) -> Schedule:
        total = sum(len(x) for x in self.prefix) + sum(self.pool_left) + sum(
            len(x) for x in self.suffix) - sum(self.pos)
        # Passes in a fixed order start when their rank and inputs allow, whatever is decided
        # elsewhere meanwhile: they run at once (like the simulator). Only pool passes are
        # decided in time order, through the heap.
        heap: list[tuple[float, int]] = []
        queued: list[tuple[float, Action] | None] = [None] * self.p  # rank's current choice
        todo = set(range(self.p))
        placed = 0
        while True:
            while todo:
                r = todo.pop()
                while self._fixed(r):
                    c = self._choice(r)
                    if c is None:
                        break
                    todo.update(self._place(r, c[1], c[0], True))
                    placed += 1
                queued[r] = None
                if not self._fixed(r):
                    c = self._choice(r)
                    if c is not None:
                        queued[r] = (c[0], c[1])
                        heapq.heappush(heap, (c[0], r))
            if not heap:
                break
            t, r = heapq.heappop(heap)
            q = queued[r]
            if q is None or q[0] != t:
                continue  # a stale entry: the rank's choice changed since
            queued[r] = None
            todo.update(self._place(r, q[1], t, False))
            todo.add(r)
            placed += 1
        if placed != total:
            stuck = [r for r in range(self.p) if len(self.out[r]) < len(
                self.schedule.programs[r])]
            raise SpecError(f"replan_tail: ranks {stuck} cannot finish within their memory "
                            f"limits {self.caps}; raise the limit or move the cut later")
        return Schedule(self.schedule.spec, tuple(tuple(o) for o in self.out),
                        self.schedule.name)

    def _place(self, r: int, a: Action, start: float, from_prefix: bool) -> set[int]:
        tab, s = self.tab, a.stage
        if from_prefix and self.pos[r] < len(self.prefix[r]):
            self.pos[r] += 1
        elif from_prefix:
            self.spos[r] += 1
        else:
            self.ready[r] = [x for x in self.ready[r] if x[4] != a]
            self.pool_left[r] -= 1
        if a.kind is Pass.F:
            fin, code = start + tab.f[s], 0
            self.held[r] += tab.mem_f[s]
        elif a.kind is Pass.W:
            fin, code = start + tab.w[s], 2
            self.held[r] -= tab.mem_w[s]
        elif a.kind is Pass.B:
            fin, code = start + tab.b[s], 1
            self.held[r] -= tab.mem_f[s] - tab.mem_w[s]
        else:
            fin, code = start + tab.b[s] + tab.w[s], 1
            self.held[r] -= tab.mem_f[s]
        key = (code, s, a.mb)
        self.end[key] = fin
        self.clock[r] = fin
        self.out[r].append(a)
        touched = set()
        for q, b in self.waiting.pop(key, ()):
            self._enlist(q, b)
            touched.add(q)
        touched.update(self.prefix_wait.pop(key, ()))
        return touched
