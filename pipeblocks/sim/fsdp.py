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
    """One rank's FSDP2 state while its program runs."""

    def __init__(self, sizes: dict[int, float], dp: int, raf: bool) -> None:
        self.sizes, self.dp, self.raf = sizes, dp, raf
        self.held = sum(p / dp for p in sizes.values())
        self.trace: list[tuple[float, float]] = [(0.0, self.held)]
        self.peak = self.held
        self.gathered: set[int] = set()
        self.pending: dict[int, float] = {}  # stage -> end of its async all-gather
        self.acc: set[int] = set()
        self.free = self.comm = 0.0

    def add(self, t: float, nbytes: float) -> None:
        self.held += nbytes
        self.trace.append((t, self.held))
        self.peak = max(self.peak, self.held)


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
    gather = [network.all_gather(b, size=dp, stride=stride) / seconds_per_unit for b in per]
    scatter = [network.reduce_scatter(b, size=dp, stride=stride) / seconds_per_unit
               for b in per]
    low = with_data_parallel(lower(schedule), DPMode.FSDP)
    before: list[list[list[Collective]]] = []  # per rank, per action: the ops just before it
    after: list[list[Collective]] = []  # per rank: the ops after its last action
    for prog in low.programs:
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
    ranks = [_Rank({s: per[s] for s in spec.stages_of(r)}, dp, reshard_after_forward)
             for r in range(spec.num_ranks)]
    ends: dict[Action, float] = {}
    spans: list[list[FSDPSpan]] = [[] for _ in ranks]
    comms: list[list[CommEvent]] = [[] for _ in ranks]

    def ops(r: int, todo: list[Collective]) -> None:
        st = ranks[r]
        for op in todo:
            s, t = op.stage, st.free
            if op.kind is CollectiveKind.UNSHARD:
                start = max(st.comm, t)
                st.comm = start + gather[s]
                st.pending[s] = st.comm
                if s not in st.gathered:
                    st.gathered.add(s)
                    st.add(t, per[s])
                comms[r].append(CommEvent(r, "unshard", s, start, st.comm))
            elif op.kind is CollectiveKind.REDUCE_GRAD:
                start = max(st.comm, t)
                st.comm = start + scatter[s]
                if s in st.acc:
                    st.acc.discard(s)
                    st.add(t, per[s] / dp - per[s])
                comms[r].append(CommEvent(r, "reduce_grad", s, start, st.comm))
            else:
                if s in st.gathered:
                    st.gathered.discard(s)
                    st.add(t, -per[s])
                comms[r].append(CommEvent(r, "reshard", s, t, t))

    def visit(r: int, pos: int, a: Action, deps: tuple[tuple[int, Action], ...]) -> None:
        st = ranks[r]
        ops(r, before[r][pos])
        s, kind = a.stage, a.kind
        ready = st.free
        for dr, k in deps:
            extra = 0.0 if dr == r else (tab.comm_act[s] if k.kind is Pass.F
                                         else tab.comm_grad[s])
            ready = max(ready, ends[k] + extra)
        if kind is Pass.W:  # FSDP2: B ran the fused backward
            spans[r].append(FSDPSpan(a, ready, ready))
            st.free = ready
            ends[a] = ready
            return
        ready = max(ready, st.pending.pop(s, 0.0))
        g = 0.0
        if s not in st.gathered:  # resharded: a blocking all-gather first
            g = gather[s]
            st.gathered.add(s)
            st.add(ready, per[s])
        dur = tab.f[s] if kind is Pass.F else tab.b[s] + tab.w[s]
        end = ready + g + dur
        if kind is not Pass.F and s not in st.acc:
            st.acc.add(s)
            st.add(ready, per[s])  # the unsharded gradients, accumulated into in place
        if kind is not Pass.F or st.raf:
            st.gathered.discard(s)
            st.add(end, -per[s])
        spans[r].append(FSDPSpan(a, ready, end, g))
        st.free = end
        ends[Action(s, Pass.B, a.mb) if kind is Pass.BW else a] = end

    walk(schedule, visit)
    for r in range(len(ranks)):
        ops(r, after[r])
    makespan = max([st.free for st in ranks] + [c.end for cs in comms for c in cs])
    return FSDPSimulation(tuple(map(tuple, spans)), tuple(map(tuple, comms)),
                          tuple(tuple(st.trace) for st in ranks),
                          tuple(st.peak for st in ranks), makespan)
