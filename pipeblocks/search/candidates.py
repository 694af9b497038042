"""Where candidate schedules come from, and how one is judged.

Three sources feed the search (:mod:`pipeblocks.search.engine`), each for one spec:

- :class:`VFamily`: the CM building-block search on the V placement
  (:mod:`pipeblocks.search.vshape`): every block that fits the memory limit is a candidate;
  the most promising are built and simulated, with their cool-down re-planned two ways (the
  paper's tight pattern, :func:`~pipeblocks.search.cooldown.tight_cooldown`, and by the
  critical path, :func:`~pipeblocks.search.tail.replan_tail`) and their W's re-placed for the
  real costs (:func:`~pipeblocks.search.refill.refill_w`).
- :func:`zb_candidates`: the ZB heuristic (:mod:`pipeblocks.search.zb`) under a few rules.
- :class:`NamedPool`: the registered generators, each simulated once.

A :class:`Candidate` carries its simulation; :func:`rank_key` orders candidates by the
:class:`Objective`: by default the shortest makespan first, then the shortest longest span (the
papers' bubble); with ``Objective.BUBBLE`` the other way round. Then the lowest peak, and, on a
tie, a named schedule before a search-made one and a plain block before a re-planned one (then
by name: deterministic).

    >>> from pipeblocks.ir import PipelineSpec
    >>> from pipeblocks.sim import UNIT
    >>> [c.how for c in zb_candidates(PipelineSpec(4, 8), UNIT, limit=4.0)][:2]
    ['zb(limit=4,warmup=depth,slack=1)', 'zb(limit=4,warmup=depth,slack=0)']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from functools import partial

from pipeblocks.blocks import reorder, repeat, squeeze
from pipeblocks.blocks.layout import Layout
from pipeblocks.errors import DeadlockError, SpecError
from pipeblocks.generators import generators
from pipeblocks.ir.bulk import no_gc
from pipeblocks.ir.schedule import Schedule
from pipeblocks.ir.spec import PipelineSpec, Placement
from pipeblocks.search.budget import EPS
from pipeblocks.search.cooldown import tight_cooldown
from pipeblocks.search.refill import program_peaks, refill_w
from pipeblocks.search.tail import replan_tail
from pipeblocks.search.vshape import VParams, VTimes, stable_peaks, v_block_of, v_params, v_times
from pipeblocks.search.zb import zb_memory_limited
from pipeblocks.sim.costs import CostModel
from pipeblocks.sim.engine import Simulation, simulate
from pipeblocks.sim.tables import Tables, tables

__all__ = ["Candidate", "Objective", "rank_key", "VFamily", "zb_candidates", "NamedPool",
           "FAMILIES"]

FAMILIES = ("v", "zb", "all")


class Objective(Enum):
    """What "best" means. ``MAKESPAN``: the shortest simulated step (first pass on any rank to
    the last on any rank), then the shortest longest span. ``BUBBLE``: the papers' metric
    first, the longest span of any rank (each rank from its own first pass to its own last;
    docs/design.md, "Metrics"), then the makespan. The papers' bounds are stated in the second;
    the two can disagree by a slot or two (docs/search.md, "Against the paper's lower bound")."""

    MAKESPAN = "makespan"
    BUBBLE = "bubble"

    @classmethod
    def parse(cls, value: Objective | str) -> Objective:
        """An :class:`Objective` from itself or its name; a SpecError names the choices."""
        if isinstance(value, Objective):
            return value
        try:
            return cls(value)
        except ValueError:
            raise SpecError(f"unknown search objective {value!r}; use one of: "
                            f"{', '.join(o.value for o in cls)}") from None


_FAMILY_ORDER = {"named": 0, "v": 1, "zb": 2, "list": 3}

Tick = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A simulated schedule and how it was made (``family``: "v", "zb", "list" or "named")."""

    family: str
    how: str
    schedule: Schedule
    simulation: Simulation

    @property
    def peak(self) -> float:
        """The largest peak over the ranks, in the cost model's memory unit."""
        return max(self.simulation.peak_memory)


def _q(x: float) -> float:
    """Round to 12 significant digits, so float noise never decides between candidates."""
    return float(f"{x:.12g}")


def score(sim: Simulation, objective: Objective = Objective.MAKESPAN) -> tuple[float, float]:
    """(makespan, longest span) or (longest span, makespan), by ``objective``."""
    pair = (_q(sim.makespan), _q(max(sim.span)))
    return pair if objective is Objective.MAKESPAN else (pair[1], pair[0])


def rank_key(c: Candidate, objective: Objective = Objective.MAKESPAN
             ) -> tuple[float, float, float, int, int, str]:
    """Sort key: the objective's two times (:func:`score`), peak, named first, no re-planning
    pass first, name."""
    return (*score(c.simulation, objective), _q(c.peak), _FAMILY_ORDER[c.family],
            c.how.count("+"), c.how)


def candidate(family: str, how: str, schedule: Schedule, costs: CostModel) -> Candidate:
    """``schedule`` named for how it was made (``search:HOW``), simulated."""
    name = how if family == "named" else f"search:{how}"
    schedule = schedule.renamed(name)
    return Candidate(family, how, schedule, simulate(schedule, costs, validate=False))


@dataclass(frozen=True, slots=True)
class _VBlock:
    params: VParams
    times: VTimes
    peaks: tuple[float, ...]

    @property
    def order(self) -> tuple[float, int, VParams]:
        """Most promising first: the most memory in use over all ranks, then the longest
        chunk-0 lifespan on rank 0 (more of rank 0's microbatches in flight leave its
        warm-up and cool-down fewer gaps). Measured on unit costs at p = 8 and 16, the block
        chosen for every budget is among the first 8 of this order (the default screen)."""
        t = self.times
        return (-_q(sum(self.peaks)), -(t.w0[0] + 1 - t.f0[0]), self.params)


class VFamily:
    """The V building-block search for one spec (V placement) and cost model.

    ``screen`` blocks (most promising first) are built and simulated at ``min(m, screen_m)``
    microbatches (default 2p), as they are and with the cool-down re-planned both ways; the
    best ``final`` of those are built with every microbatch (all three ways), and the best
    ``refill`` of those also get their W's re-placed for the real costs. Everything built is
    kept.
    """

    def __init__(self, tab: Tables, costs: CostModel, *, screen: int = 8, final: int = 2,
                 refill: int = 1, screen_m: int | None = None,
                 objective: Objective = Objective.MAKESPAN) -> None:
        spec = tab.spec
        if spec.placement is not Placement.V:
            raise SpecError(f"the V search needs placement 'v' (got {spec.describe()})")
        self.tab, self.costs = tab, costs
        self.p, self.m = spec.num_ranks, spec.num_microbatches
        self.screen, self.final, self.refill = screen, final, refill
        self.objective = objective
        self.screen_m = min(self.m, screen_m if screen_m is not None else max(2 * self.p, 8))
        blocks = []
        for v in v_params(self.p):
            t = v_times(self.p, v)
            if t is not None:
                blocks.append(_VBlock(v, t, stable_peaks(self.p, t, tab.mem_f, tab.mem_w)))
        blocks.sort(key=lambda b: b.order)
        self.blocks = blocks
        self._screened: dict[tuple[VParams, float], tuple[float, float]] = {}
        self._built: dict[VParams, Candidate] = {}
        self._layouts: dict[VParams, Layout] = {}
        self._refilled: dict[tuple[VParams, float, float], Candidate | None] = {}

    def smallest_peak(self) -> float:
        """The least peak any block of the family holds (its stable phase)."""
        return min((max(b.peaks) for b in self.blocks), default=float("inf"))

    def feasible(self, limit: float) -> list[_VBlock]:
        """Blocks whose stable-phase peak keeps ``limit`` on every rank, most promising first.
        (A finite repetition never holds more than the stable phase.)"""
        tol = EPS * max(1.0, abs(limit))
        return [b for b in self.blocks if max(b.peaks) <= limit + tol]

    def _layout(self, b: _VBlock, m: int) -> Layout:
        """The block repeated m times, warm-up and cool-down gaps closed (blocks.build's
        steps before the squeeze, kept: the tight cool-down works on its slots)."""
        with no_gc():
            return reorder(repeat(v_block_of(self.p, b.params, b.times), m), costs=self.costs)

    def steps(self, limit: float) -> int:
        """How many builds :meth:`best` may still do for ``limit`` (for a progress bar)."""
        shortlist = self.feasible(limit)[: self.screen]
        todo = sum(1 for b in shortlist if (b.params, _q(limit)) not in self._screened)
        return todo + 3 * self.final + 2 * self.refill

    def best(self, limit: float, tick: Tick | None = None) -> list[Candidate]:
        """The finalists for ``limit``, built with every microbatch (empty if none fits)."""
        shortlist = self.feasible(limit)[: self.screen]
        scores = []
        for b in shortlist:
            key = (b.params, _q(limit))
            if key not in self._screened:
                # a block is as good as the best of its plain schedule and its two re-planned
                # cool-downs (which may use the whole limit)
                if self.screen_m == self.m:
                    sims = [c.simulation for c in self._variants(b, limit)]
                else:
                    sims = self._screen(b, limit)
                self._screened[key] = min(score(x, self.objective) for x in sims)
                if tick:
                    tick("v: screening blocks")
            scores.append((self._screened[key], b.order, b))
        scores.sort(key=lambda x: (x[0], x[1]))
        out = []
        for rank, (_, _, b) in enumerate(scores[: self.final]):
            plain = self._full(b)
            out.append(plain)
            if tick:
                tick("v: building finalists")
            for make, what in ((self._tight, "v: tight cool-down"),
                               (self._replan, "v: re-planning the cool-down")):
                c = make(b, plain, limit)
                if c is not None:
                    out.append(c)
                if tick:
                    tick(what)
            if rank < self.refill:
                for slack in (1.0, 0.0):
                    out.append(self._refill(b, plain, limit, slack))
                    if tick:
                        tick("v: placing W's for the real costs")
        return out

    def _screen(self, b: _VBlock, limit: float) -> list[Simulation]:
        """Simulations of the block's three ways with ``screen_m`` microbatches."""
        layout = self._layout(b, self.screen_m)
        schedule = squeeze(layout)
        sims = [simulate(schedule, self.costs, validate=False)]
        tight = self._tight_schedule(b, layout, limit)
        if tight is not None:
            sims.append(tight[1])
        try:
            replanned = replan_tail(schedule, self.costs, limit=limit, simulation=sims[0])
        except SpecError:
            pass
        else:
            sims.append(simulate(replanned, self.costs, validate=False))
        return sims

    def _variants(self, b: _VBlock, limit: float) -> list[Candidate]:
        """The block with every microbatch: plain, tight cool-down, re-planned cool-down (the
        ones that exist within ``limit``); the plain one first."""
        out = [self._full(b)]
        for make in (self._tight, self._replan):
            c = make(b, out[0], limit)
            if c is not None:
                out.append(c)
        return out

    def _tight_schedule(self, b: _VBlock, layout: Layout, limit: float,
                        name: str = "") -> tuple[Schedule, Simulation] | None:
        """:func:`tight_cooldown` of ``layout`` holding as many activations as the block
        does, simulated; None if the pattern does not fit, deadlocks or exceeds ``limit``."""
        one = (1.0,) * len(self.tab.mem_f)
        held = round(max(stable_peaks(self.p, b.times, one, one)))
        s = tight_cooldown(layout, held, name)
        if s is None:
            return None
        # memory per stage does not depend on m, so the tables of the full spec serve
        if max(program_peaks(s, self.tab)) > limit + EPS * max(1.0, abs(limit)):
            return None
        try:
            return s, simulate(s, self.costs, validate=False)
        except DeadlockError:  # the pattern broke a dependency: not a candidate
            return None

    def _tight(self, b: _VBlock, base: Candidate, limit: float) -> Candidate | None:
        # ``base`` is unused: the pattern works on the layout, not on the plain schedule
        key = (b.params, _q(limit), -2.0)
        if key not in self._refilled:
            how = f"{b.params.label()}+cool"
            made = self._tight_schedule(b, self._layout_full(b), limit, f"search:{how}")
            self._refilled[key] = None if made is None else Candidate("v", how, *made)
        return self._refilled[key]

    def _replan(self, b: _VBlock, base: Candidate, limit: float) -> Candidate | None:
        key = (b.params, _q(limit), -1.0)
        if key not in self._refilled:
            try:
                s = replan_tail(base.schedule, self.costs, limit=limit,
                                simulation=base.simulation)
            except SpecError:  # the greedy order ran out of memory: not a candidate
                self._refilled[key] = None
            else:
                how = f"{b.params.label()}+tail(limit={limit:.6g})"
                self._refilled[key] = candidate("v", how, s, self.costs)
        return self._refilled[key]

    def _layout_full(self, b: _VBlock) -> Layout:
        if b.params not in self._layouts:
            self._layouts[b.params] = self._layout(b, self.m)
        return self._layouts[b.params]

    def _full(self, b: _VBlock) -> Candidate:
        if b.params not in self._built:
            schedule = squeeze(self._layout_full(b), f"search:{b.params.label()}")
            self._built[b.params] = candidate("v", b.params.label(), schedule, self.costs)
        return self._built[b.params]

    def _refill(self, b: _VBlock, base: Candidate, limit: float, slack: float) -> Candidate:
        key = (b.params, _q(limit), slack)
        if key not in self._refilled:
            s = refill_w(base.schedule, self.costs, limit=limit, slack=slack)
            how = f"{b.params.label()}+w(limit={limit:.6g},slack={slack:g})"
            self._refilled[key] = candidate("v", how, s, self.costs)
        made = self._refilled[key]
        assert made is not None  # refill_w always gives a schedule
        return made


ZB_RULES = (("depth", 1.0), ("depth", 0.0), ("tight", 1.0), ("fill", 0.0))
"""The (warm-up, slack) rules of the ZB heuristic the search tries."""


def zb_candidates(spec: PipelineSpec, costs: CostModel, limit: float,
                  tick: Tick | None = None) -> list[Candidate]:
    """The ZB heuristic's schedules under ``limit`` for each rule of :data:`ZB_RULES`."""
    out = []
    for warmup, slack in ZB_RULES:
        s = zb_memory_limited(spec, costs, limit, slack=slack, warmup=warmup)
        how = f"zb(limit={limit:.6g},warmup={warmup},slack={slack:g})"
        out.append(candidate("zb", how, s, costs))
        if tick:
            tick("zb: memory-limited heuristic")
    return out


@dataclass(frozen=True, slots=True)
class _Named:
    name: str
    make: Callable[[], Schedule]
    tab: Tables
    probe_peak: float  # the peak with min(m, 2p) microbatches: never more than with m


class NamedPool:
    """The registered generators that accept (p, m) with ``placements`` and fit ``costs``.

    A generator's peak never falls as microbatches are added (checked for every registered
    one in tests/search), so each is first generated with min(m, 2p) microbatches: one whose
    peak already exceeds a budget there is never generated with all m for it.
    """

    def __init__(self, p: int, m: int, costs: CostModel,
                 placements: Iterable[Placement]) -> None:
        self.costs = costs
        wanted = set(placements)
        self.entries: list[_Named] = []
        self.skipped: dict[str, str] = {}
        probe_m = min(m, 2 * p)
        for gen in generators():
            if gen.placement not in wanted:
                continue
            try:
                spec = gen.spec(p, m)
                tab = tables(spec, costs)
                probe = gen(gen.spec(p, probe_m))
            except SpecError as e:
                self.skipped[gen.name] = str(e)
                continue
            self.entries.append(_Named(gen.name, partial(gen, spec), tab,
                                       max(program_peaks(probe, tables(probe.spec, costs)))))
        self._full: dict[str, tuple[Schedule, float]] = {}
        self._sims: dict[str, Candidate] = {}

    def peak(self, name: str) -> float:
        """The named schedule's peak with all m microbatches (generated on first use)."""
        return self._made(name)[1]

    def _made(self, name: str) -> tuple[Schedule, float]:
        if name not in self._full:
            e = next(e for e in self.entries if e.name == name)
            try:
                schedule = e.make()
            except SpecError as err:  # accepts min(m, 2p) but not m: leave it out
                self.skipped[name] = str(err)
                self._full[name] = (Schedule(e.tab.spec, ((),) * e.tab.spec.num_ranks),
                                    float("inf"))
            else:
                self._full[name] = (schedule, max(program_peaks(schedule, e.tab)))
        return self._full[name]

    def candidate(self, name: str) -> Candidate:
        """The simulated named schedule ``name``."""
        if name not in self._sims:
            self._sims[name] = candidate("named", name, self._made(name)[0], self.costs)
        return self._sims[name]
