"""A cost-aware list scheduler under a memory limit, for any placement (V included).

In the spirit of the ZB and CM papers' adaptive schedulers (Qi et al. 2024), but for every
placement and any per-stage costs: the ranks are list-executed with the real times, and each
rank, whenever it is free, picks its next pass among those whose inputs are done (each stage's
F's, B's and W's in microbatch order):

- a pass that can start earliest goes first; among passes that can start at that time the
  rule's priority decides (``deep``: the pass furthest along its microbatch's chain; ``b-deep``
  and ``b-shallow``: a B before an F, then the F of the deepest or the shallowest stage);
- an F only while it fits the limit; on a V rank a chunk-0 F must also leave room for the
  chunk-1 F of every microbatch it holds that has not turned yet, its own included
  (``reserve="strict"``), or for all but its own while some turned microbatch still holds
  memory that its B's and W's will free (``"loose"``), so the rank cannot fill up with
  microbatches it cannot turn (``"none"``: no such care);
- a W fills the wait before the next F or B when it fits in it (``eager``: whenever the rank
  would wait at all), and runs whenever nothing else can.

The rank that can start a pass earliest commits it; a rank whose choice depended on a pass not
yet placed chooses again when that pass is placed. Nothing is random; several rules are tried
and the simulator times each result.

    >>> from pipeblocks.ir import PipelineSpec
    >>> from pipeblocks.sim import UNIT, simulate
    >>> s = list_schedule(PipelineSpec(4, 8, 2, "v"), UNIT, limit=2.0)
    >>> sim = simulate(s)
    >>> max(sim.peak_memory) <= 2.0, sim.makespan < 72
    (True, True)
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from pipeblocks.errors import DeadlockError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import PipelineSpec, Placement
from pipeblocks.search.budget import EPS
from pipeblocks.search.candidates import Candidate, Tick, candidate
from pipeblocks.sim.costs import CostModel
from pipeblocks.sim.tables import Tables, tables

__all__ = ["ListRule", "LIST_RULES", "LIST_MAX_PASSES", "list_schedule", "list_candidates"]

_F, _B, _W = 0, 1, 2
_PASS = (Pass.F, Pass.B, Pass.W)


@dataclass(frozen=True, slots=True)
class ListRule:
    """How a rank picks among passes that can start at the same time (see the module)."""

    order: str = "b-deep"  # "deep", "b-deep" or "b-shallow"
    reserve: str = "loose"  # "strict", "loose" or "none"
    eager_w: bool = False

    def describe(self) -> str:
        w = ",eager-w" if self.eager_w else ""
        return f"{self.order},{self.reserve}{w}"


LIST_RULES = (ListRule("b-deep", "loose"), ListRule("b-deep", "strict"), ListRule("deep", "loose"),
              ListRule("b-shallow", "loose"), ListRule("b-deep", "none"),
              ListRule("b-deep", "loose", eager_w=True))
"""The rules the search tries (each a few passes' worth of time per pass)."""

LIST_MAX_PASSES = 4000
"""The search runs the list scheduler only up to this many passes (3 x stages x m): it is
pure Python, about 60 microseconds a pass and rule, and the V search covers large sizes."""


class _State:
    """Placed passes: end times by (kind, stage, mb); per rank its free time, memory held and
    the next microbatch of each (kind, stage)."""

    def __init__(self, tab: Tables, limit: float, rule: ListRule) -> None:
        spec = tab.spec
        self.tab, self.limit, self.rule = tab, limit, rule
        self.n, self.m = spec.num_stages, spec.num_microbatches
        self.end: list[list[list[float]]] = [[[-1.0] * self.m for _ in range(self.n)]
                                             for _ in range(3)]
        self.next = [[0] * self.n for _ in range(3)]
        p = spec.num_ranks
        self.free, self.held = [0.0] * p, [0.0] * p
        self.unturned, self.turned = [0] * p, [0] * p  # V: chunk-1 F to come / done, held
        self.programs: list[list[Action]] = [[] for _ in range(p)]
        self.stages = [spec.stages_of(r) for r in range(p)]
        # the stage a V rank's chunk-0 F must leave room for (its own chunk-1 stage)
        self.partner = {s: spec.num_stages - 1 - s for s in range(p)} \
            if spec.placement is Placement.V else {}

    def ready(self, kind: int, s: int, j: int) -> float | None:
        """When pass (kind, s, j) could start as far as its inputs go; None: not yet known."""
        tab, end = self.tab, self.end
        if kind == _F:
            if s == 0:
                return 0.0
            e = end[_F][s - 1][j]
            return None if e < 0 else e + tab.comm_act[s]
        if kind == _W:
            e = end[_B][s][j]
            return None if e < 0 else e
        e = end[_F][s][j]
        if e < 0:
            return None
        if s < self.n - 1:
            up = end[_B][s + 1][j]
            if up < 0:
                return None
            e = max(e, up + tab.comm_grad[s])
        return e

    def fits_f(self, r: int, s: int) -> bool:
        room = self.limit + EPS * max(1.0, self.limit) - self.held[r] - self.tab.mem_f[s]
        if room < 0 or self.rule.reserve == "none" or s not in self.partner:
            return room >= 0
        turn = self.tab.mem_f[self.partner[s]]
        if room >= (self.unturned[r] + 1) * turn:
            return True
        return self.rule.reserve == "loose" and self.turned[r] > 0 and \
            room >= self.unturned[r] * turn

    def priority(self, kind: int, s: int) -> tuple[int, int]:
        """Smaller first: the rule's order among passes that can start together."""
        depth = s if kind == _F else 2 * self.n - 1 - s  # place along the microbatch's chain
        if self.rule.order == "deep":
            return (0, -depth)
        if kind != _F:
            return (0, -depth)
        return (1, -s if self.rule.order == "b-deep" else s)

    def choose(self, r: int) -> tuple[float, int, int, int] | None:
        """Rank r's next pass (start, kind, stage, mb), or None while it cannot tell."""
        t = self.free[r]
        work: list[tuple[float, tuple[int, int], int, int, int]] = []
        ws: list[tuple[float, int, int]] = []
        for s in self.stages[r]:
            for kind in (_F, _B, _W):
                j = self.next[kind][s]
                if j >= self.m:
                    continue
                e = self.ready(kind, s, j)
                if e is None or (kind == _F and not self.fits_f(r, s)):
                    continue
                start = max(t, e)
                if kind == _W:
                    ws.append((start, s, j))
                else:
                    work.append((start, self.priority(kind, s), kind, s, j))
        w = min(ws) if ws else None
        if work:
            first = min(x[0] for x in work)
            start, _, kind, s, j = min(x for x in work if x[0] <= first + 1e-12)
            if w is not None:
                gap = start - w[0]
                if gap > 0 and (self.rule.eager_w or self.tab.w[w[1]] <= gap + 1e-12):
                    return (w[0], _W, w[1], w[2])
            return (start, kind, s, j)
        if w is not None:
            return (w[0], _W, w[1], w[2])
        return None

    def commit(self, r: int, start: float, kind: int, s: int, j: int) -> None:
        tab = self.tab
        fin = start + tab.duration(s, _PASS[kind])
        self.end[kind][s][j] = fin
        self.next[kind][s] += 1
        self.free[r] = fin
        mf, mw = tab.mem_f[s], tab.mem_w[s]
        self.held[r] += mf if kind == _F else (mw - mf) if kind == _B else -mw
        if s in self.partner and kind == _F:  # a chunk-0 F: one more to turn
            self.unturned[r] += 1
        elif self.partner and kind == _F and s >= len(self.partner):  # its turn (chunk 1)
            self.unturned[r] -= 1
            self.turned[r] += 1
        elif self.partner and kind == _W and s < len(self.partner):  # chunk 0 freed at last
            self.turned[r] -= 1
        self.programs[r].append(Action(s, _PASS[kind], j))


def list_schedule(spec: PipelineSpec, costs: CostModel, limit: float,
                  rule: ListRule = ListRule(), tab: Tables | None = None) -> Schedule:
    """The list scheduler's schedule of ``spec`` within ``limit`` per rank (the cost model's
    memory unit) under ``rule``. Raises :class:`DeadlockError` when every rank is left
    waiting (the limit too tight for this rule)."""
    tab = tab if tab is not None else tables(spec, costs)
    st = _State(tab, limit, rule)
    p, n, m = spec.num_ranks, spec.num_stages, spec.num_microbatches
    heap: list[tuple[float, int, int, int, int]] = []
    version = [0] * p

    def push(r: int) -> None:
        version[r] += 1
        c = st.choose(r)
        if c is not None:
            heapq.heappush(heap, (c[0], r, version[r], c[1], c[2] * m + c[3]))

    for r in range(p):
        push(r)
    left = 3 * n * m
    while heap:
        start, r, ver, kind, code = heapq.heappop(heap)
        if ver != version[r]:
            continue
        s, j = divmod(code, m)
        st.commit(r, start, kind, s, j)
        left -= 1
        woken = {r}
        if kind == _F and s < n - 1:
            woken.add(tab.rank_of[s + 1])
        if kind == _B and s > 0:
            woken.add(tab.rank_of[s - 1])
        for q in woken:
            push(q)
    if left:
        raise DeadlockError(f"list scheduler ({rule.describe()}) is stuck with {left} passes "
                            f"left under limit {limit:g} on {spec.describe()}; a larger "
                            f"limit or another rule gets through", blocked={})
    v = spec.stages_per_rank
    where = "v" if spec.placement is Placement.V else "loop" if v == 1 else f"loop-v{v}"
    return Schedule.from_lists(spec, st.programs, f"list({where},{rule.describe()},"
                               f"limit={limit:g})")


def list_candidates(tab: Tables, costs: CostModel, limit: float,
                    tick: Tick | None = None) -> list[Candidate]:
    """The list scheduler's schedules of ``tab.spec`` under ``limit`` for each rule of
    :data:`LIST_RULES` that gets through (family "list")."""
    out = []
    for rule in LIST_RULES:
        try:
            s = list_schedule(tab.spec, costs, limit, rule, tab)
        except DeadlockError:
            continue
        finally:
            if tick:
                tick("list scheduler")
        out.append(candidate("list", s.name, s, costs))
    return out
