"""A simulated FSDP2 step: unshard, reshard and reduce-scatter charged, parameter memory tracked.

The lowered program of :func:`pipeblocks.ir.hybrid.with_data_parallel` with ``DPMode.FSDP``
puts ``unshard(s)`` one stage ahead, and ``reduce_grad(s)`` then ``reshard(s)`` after the last
backward of s. This module times those ops and follows each rank's parameter and gradient
bytes the way ``runtime/fsdp.py`` drives FSDP2 (torch 2.13, ``fully_shard`` per stage, its
gradient sync off until ``reduce_grad``):

- **sharded parameters**, ``P/dp`` per stage, always held;
- **gathered parameters**, ``P``: from an ``unshard`` op (an all-gather on the rank's one
  communication stream, asynchronous: the stage's next pass waits for it) to the end of the
  stage's next pass. FSDP2 reshards after every forward (``reshard_after_forward``, unless
  turned off: then the gathered parameters stay from F to the next backward) and after every
  backward; a pass that finds its stage resharded all-gathers first, blocking (that time is
  the span's ``gather``);
- **unsharded gradients**, ``P``: from the stage's first backward of the step; later ones add
  into them in place (autograd's accumulation on the unsharded parameters' ``.grad``: without
  mixed precision FSDP2 keeps no separate accumulated copy);
- at ``reduce_grad(s)`` the accumulated gradient is reduce-scattered (asynchronous, on the
  communication stream) into the **sharded gradient**, ``P/dp``, held to the step's end;
  ``reshard(s)`` frees any gathered parameters.

Under FSDP2 a stage runs no separate W: its hooks make B the fused backward (docs/hybrid.md),
so the simulated B lasts B + W and W takes no time, as executed. Memory here is parameter and
gradient bytes only (activations: :mod:`pipeblocks.sim.memory`; optimizer state: not counted).

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.sim.collectives import Link, Network
    >>> from pipeblocks.sim.costs import UniformCosts
    >>> net = Network(gpus_per_node=8, intra=Link(1e9), inter=Link(1e9))
    >>> sim = simulate_fsdp(generate("1f1b", 2, 4), UniformCosts(f=1, b=1, w=1),
    ...                     param_bytes=4e6, dp=2, network=net, seconds_per_unit=1e-3)
    >>> [(c.kind, c.stage, c.start, c.end) for c in sim.comms[1]][:2]
    [('unshard', 1, 0.0, 2.0), ('reduce_grad', 1, 29.0, 31.0)]
    >>> [(str(x.action), x.start, x.end, x.gather) for x in sim.spans[1][:3]]  # re-gathers
    [('1F0', 3.0, 4.0, 0.0), ('1BW0', 4.0, 8.0, 2.0), ('1F1', 8.0, 11.0, 2.0)]
    >>> sim.peak_bytes        # each rank: its shard 2e6 + gathered 4e6 + unsharded gradient 4e6
    (10000000.0, 10000000.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.deps import walk
from pipeblocks.ir.hybrid import Collective, CollectiveKind, DPMode, with_data_parallel
from pipeblocks.ir.lowering import lower
from pipeblocks.ir.schedule import Schedule
from pipeblocks.sim.collectives import Network
from pipeblocks.sim.costs import CostModel
from pipeblocks.sim.tables import tables

__all__ = ["FSDPSpan", "CommEvent", "FSDPSimulation", "simulate_fsdp"]


@dataclass(frozen=True, slots=True)
class FSDPSpan:
    """One pass: ``gather`` of its time is a blocking all-gather of a resharded stage."""

    action: Action
    start: float
    end: float
    gather: float = 0.0


@dataclass(frozen=True, slots=True)
class CommEvent:
    """An ``unshard`` (all-gather), ``reduce_grad`` (reduce-scatter) or ``reshard`` (free)."""

    rank: int
    kind: str
    stage: int
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class FSDPSimulation:
    """Each rank's passes, communication ops and parameter + gradient bytes over time."""

    spans: tuple[tuple[FSDPSpan, ...], ...]
    comms: tuple[tuple[CommEvent, ...], ...]
    memory: tuple[tuple[tuple[float, float], ...], ...]  # (time, bytes) steps per rank
    peak_bytes: tuple[float, ...]
    makespan: float


class _Rank:
    """One rank's FSDP2 state while its program runs (bytes ``per`` stage, op times)."""

    def __init__(self, r: int, stages: Sequence[int], per: Sequence[float],
                 times: tuple[Sequence[float], Sequence[float]], dp: int, raf: bool) -> None:
        self.r, self.per, self.dp, self.raf = r, per, dp, raf
        self.gather, self.scatter = times
        self.held = sum(per[s] / dp for s in stages)
        self.trace: list[tuple[float, float]] = [(0.0, self.held)]
        self.peak = self.held
        self.gathered: set[int] = set()
        self.pending: dict[int, float] = {}  # stage -> end of its async all-gather
        self.acc: set[int] = set()  # stages holding unsharded gradients
        self.free = self.comm = 0.0
        self.spans: list[FSDPSpan] = []
        self.comms: list[CommEvent] = []

    def add(self, t: float, nbytes: float) -> None:
        self.held += nbytes
        self.trace.append((t, self.held))
        self.peak = max(self.peak, self.held)

    def collective(self, op: Collective) -> None:
        """An op, issued when the rank reaches it (its previous pass ended)."""
        s, t, per = op.stage, self.free, self.per
        if op.kind is CollectiveKind.RESHARD:
            if s in self.gathered:
                self.gathered.discard(s)
                self.add(t, -per[s])
            self.comms.append(CommEvent(self.r, "reshard", s, t, t))
            return
        start = max(self.comm, t)
        if op.kind is CollectiveKind.UNSHARD:
            self.comm = self.pending[s] = start + self.gather[s]
            if s not in self.gathered:
                self.gathered.add(s)
                self.add(t, per[s])
        else:
            self.comm = start + self.scatter[s]
            if s in self.acc:
                self.acc.discard(s)
                self.add(t, per[s] / self.dp - per[s])
        self.comms.append(CommEvent(self.r, op.kind.value, s, start, self.comm))

    def run(self, a: Action, ready: float, duration: float) -> float:
        """A pass whose inputs are ready at ``ready``; its end."""
        s, kind, per = a.stage, a.kind, self.per
        if kind is Pass.W:  # FSDP2: B ran the fused backward
            self.spans.append(FSDPSpan(a, ready, ready))
            self.free = ready
            return ready
        ready = max(ready, self.pending.pop(s, 0.0))
        g = 0.0
        if s not in self.gathered:  # resharded: a blocking all-gather first
            g = self.gather[s]
            self.gathered.add(s)
            self.add(ready, per[s])
        end = ready + g + duration
        if kind is not Pass.F and s not in self.acc:
            self.acc.add(s)
            self.add(ready, per[s])  # the unsharded gradients, accumulated into in place
        if kind is not Pass.F or self.raf:
            self.gathered.discard(s)
            self.add(end, -per[s])
        self.spans.append(FSDPSpan(a, ready, end, g))
        self.free = end
        return end


def _ops_around(programs: Sequence[Sequence[object]]
                ) -> tuple[list[list[list[Collective]]], list[list[Collective]]]:
    """Per rank: the collectives just before each action, and those after the last one."""
    before: list[list[list[Collective]]] = []
    after: list[list[Collective]] = []
    for prog in programs:
        mine: list[list[Collective]] = []
        run: list[Collective] = []
        for op in prog:
            if isinstance(op, Collective):
                run.append(op)
            elif isinstance(op, Action):
                mine.append(run)
                run = []
        before.append(mine)
        after.append(run)
    return before, after


def simulate_fsdp(
    schedule: Schedule, costs: CostModel, *, param_bytes: float | Sequence[float], dp: int,
    network: Network, tp: int = 1, seconds_per_unit: float = 1.0,
    reshard_after_forward: bool = True,
) -> FSDPSimulation:
    """Simulate one step of ``dp`` FSDP2 replicas of ``schedule``.

    ``param_bytes``: parameter bytes of each stage (one number: every stage; gradients have the
    same size); the costs' time unit is ``seconds_per_unit`` seconds.
    """
    spec = schedule.spec
    per = ([float(param_bytes)] * spec.num_stages if isinstance(param_bytes, int | float)
           else [float(b) for b in param_bytes])
    if len(per) != spec.num_stages:
        raise SpecError(f"param_bytes gives {len(per)} stages but the schedule has "
                        f"{spec.num_stages}; give one number per stage, or one for all")
    tab = tables(spec, costs)
    stride = spec.num_ranks * tp
    times = ([network.all_gather(b, size=dp, stride=stride) / seconds_per_unit for b in per],
             [network.reduce_scatter(b, size=dp, stride=stride) / seconds_per_unit
              for b in per])
    before, after = _ops_around(with_data_parallel(lower(schedule), DPMode.FSDP).programs)
    ranks = [_Rank(r, spec.stages_of(r), per, times, dp, reshard_after_forward)
             for r in range(spec.num_ranks)]
    ends: dict[Action, float] = {}

    def visit(r: int, pos: int, a: Action, deps: tuple[tuple[int, Action], ...]) -> None:
        st = ranks[r]
        for op in before[r][pos]:
            st.collective(op)
        s, ready = a.stage, st.free
        for dr, k in deps:  # plus the transfer when the dependency ran on another rank
            extra = 0.0 if dr == r else (tab.comm_act[s] if k.kind is Pass.F
                                         else tab.comm_grad[s])
            ready = max(ready, ends[k] + extra)
        dur = tab.f[s] if a.kind is Pass.F else tab.b[s] + tab.w[s]
        ends[Action(s, Pass.B, a.mb) if a.kind is Pass.BW else a] = st.run(a, ready, dur)

    walk(schedule, visit)
    for st, ops in zip(ranks, after, strict=True):
        for op in ops:
            st.collective(op)
    makespan = max([st.free for st in ranks] + [c.end for st in ranks for c in st.comms])
    return FSDPSimulation(tuple(tuple(st.spans) for st in ranks),
                          tuple(tuple(st.comms) for st in ranks),
                          tuple(tuple(st.trace) for st in ranks),
                          tuple(st.peak for st in ranks), makespan)
