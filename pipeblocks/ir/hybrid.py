"""Hybrid parallelism in the IR: the device mesh and the data-parallel actions.

**The mesh.** ``dp * pp * tp`` ranks in three named dimensions, tensor parallel innermost:
global rank ``r = (d * pp + i) * tp + t`` for data-parallel index d, pipeline rank i and
tensor-parallel index t (row-major over ``(dp, pp, tp)``, as ``init_device_mesh`` lays it out).
So a tensor-parallel group is ``tp`` consecutive ranks (one node when it fits), a pipeline is
``pp`` ranks ``tp`` apart, and a data-parallel group is ``dp`` ranks ``pp * tp`` apart. Every
pipeline (one d, one t) runs the same schedule.

    >>> mesh = Mesh(dp=2, pp=2, tp=1)
    >>> mesh.world, mesh.coords(3), mesh.pipeline(3), mesh.dp_group(1)
    (4, (1, 1, 0), (2, 3), (1, 3))

**The actions.** Data parallelism becomes ops of the lowered program (:class:`Collective`), so
the simulator, the pictures and the executor all see it: ``REDUCE_GRAD`` of a stage comes right
after its last W (or BW) of the step and the sends that pass makes, so no gradient is reduced
before its W ran (the B/W split), and is asynchronous (awaited before the optimizer step).

    >>> from pipeblocks.generators import generate
    >>> from pipeblocks.ir.lowering import lower, op_text
    >>> low = with_data_parallel(lower(generate("1f1b", num_ranks=2, num_microbatches=2)))
    >>> " ".join(op_text(op) for op in low.programs[1])
    'recv(act 0->1 #0) recv(act 0->1 #1) 1F0 1BW0 send(grad 1->0 #0) 1F1 1BW1 send(grad 1->0 #1) reduce_grad(1)'
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.lowering import Comm, LoweredSchedule, Op

__all__ = ["Mesh", "DPMode", "CollectiveKind", "Collective", "with_data_parallel",
           "last_grad_pass"]


class DPMode(enum.Enum):
    """How a stage's parameters are replicated over the data-parallel group."""

    DDP = "ddp"  # every rank holds the whole stage; gradients all-reduced (averaged)
    FSDP = "fsdp"  # parameters sharded (FSDP2); unshard before use, gradients reduce-scattered


@dataclass(frozen=True, slots=True)
class Mesh:
    """The device mesh: ``dp`` data-parallel replicas of ``pp`` pipeline ranks of ``tp``."""

    dp: int = 1
    pp: int = 1
    tp: int = 1

    def __post_init__(self) -> None:
        for name in ("dp", "pp", "tp"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"mesh dimension '{name}' must be an integer >= 1 "
                                f"(got {value!r}); e.g. Mesh(dp=2, pp=2, tp=1)")

    @staticmethod
    def of(world: int, dp: int = 1, tp: int = 1) -> Mesh:
        """The mesh of ``world`` ranks with ``dp`` and ``tp`` given: pp = world / (dp * tp)."""
        if dp < 1 or tp < 1 or world % (dp * tp):
            raise SpecError(
                f"the mesh needs ranks divisible by dp * tp (got {world} ranks, dp={dp}, "
                f"tp={tp}); use --ranks {max(1, world // (dp * tp)) * dp * tp} or change --dp")
        return Mesh(dp, world // (dp * tp), tp)

    @property
    def world(self) -> int:
        return self.dp * self.pp * self.tp

    def rank(self, d: int, i: int, t: int = 0) -> int:
        """The global rank of data-parallel index d, pipeline rank i, tensor-parallel t."""
        return (d * self.pp + i) * self.tp + t

    def coords(self, rank: int) -> tuple[int, int, int]:
        """``(d, i, t)`` of a global rank."""
        if not 0 <= rank < self.world:
            raise SpecError(f"rank {rank} is not in the mesh of {self.world} ranks ({self})")
        return rank // (self.pp * self.tp), rank // self.tp % self.pp, rank % self.tp

    def pipeline(self, rank: int) -> tuple[int, ...]:
        """The global ranks of ``rank``'s pipeline, by pipeline rank."""
        d, _, t = self.coords(rank)
        return tuple(self.rank(d, i, t) for i in range(self.pp))

    def dp_group(self, rank: int) -> tuple[int, ...]:
        """The global ranks of ``rank``'s data-parallel group, by data-parallel index."""
        _, i, t = self.coords(rank)
        return tuple(self.rank(d, i, t) for d in range(self.dp))

    def tp_group(self, rank: int) -> tuple[int, ...]:
        """The global ranks of ``rank``'s tensor-parallel group."""
        d, i, _ = self.coords(rank)
        return tuple(self.rank(d, i, t) for t in range(self.tp))

    def __str__(self) -> str:
        return f"dp {self.dp} x pp {self.pp} x tp {self.tp}"


class CollectiveKind(enum.Enum):
    """A data-parallel op on one stage's parameters or gradients."""

    REDUCE_GRAD = "reduce_grad"  # average the stage's gradients over the dp group (async)
    UNSHARD = "unshard"  # all-gather the stage's sharded parameters (FSDP)
    RESHARD = "reshard"  # free the gathered parameters (FSDP)


@dataclass(frozen=True, slots=True)
class Collective:
    """A data-parallel op of the lowered program on stage ``stage``."""

    kind: CollectiveKind
    stage: int

    def __str__(self) -> str:
        return f"{self.kind.value}({self.stage})"


def last_grad_pass(actions: tuple[Action, ...]) -> dict[int, int]:
    """Per stage, the position of its last W or BW in one rank's program (where its weight
    gradients are complete)."""
    last: dict[int, int] = {}
    for pos, a in enumerate(actions):
        if a.kind is Pass.W or a.kind is Pass.BW:
            last[a.stage] = pos
    return last


def with_data_parallel(lowered: LoweredSchedule, mode: DPMode = DPMode.DDP) -> LoweredSchedule:
    """``lowered`` with a ``REDUCE_GRAD`` of every stage right after its last W or BW of the
    step and that pass's sends (a stage with no weight-gradient pass is reduced at the end).

    ``DPMode.FSDP`` adds ``UNSHARD`` one stage ahead (the rank's first stage at the start, each
    next one before the first pass of the stage before it, in order of first use) and
    ``RESHARD`` right after each ``REDUCE_GRAD``.
    """
    fsdp = mode is DPMode.FSDP
    programs: list[tuple[Op | Collective, ...]] = []
    for prog in lowered.programs:
        actions = tuple(op for op in prog if isinstance(op, Action))
        last = last_grad_pass(actions)
        pending = {actions[pos] for pos in last.values()}
        order = list(dict.fromkeys(a.stage for a in actions))  # stages by first use
        ahead = dict(zip(order, order[1:], strict=False))  # stage -> the one to prefetch
        out: list[Op | Collective] = []
        if fsdp and order:
            out.append(Collective(CollectiveKind.UNSHARD, order[0]))
        owed: list[int] = []
        started: set[int] = set()
        for op in prog:
            if owed and not isinstance(op, Comm):  # after the pass's trailing sends
                out += _reduce(owed, fsdp)
                owed = []
            if fsdp and isinstance(op, Action) and op.stage not in started:
                started.add(op.stage)
                if op.stage in ahead:
                    out.append(Collective(CollectiveKind.UNSHARD, ahead[op.stage]))
            out.append(op)
            if isinstance(op, Action) and op in pending:
                owed.append(op.stage)
        owed += sorted(set(order) - set(last))
        out += _reduce(owed, fsdp)
        programs.append(tuple(out))
    return LoweredSchedule(lowered.schedule, tuple(programs))  # type: ignore[arg-type]


def _reduce(stages: list[int], fsdp: bool) -> list[Collective]:
    out = []
    for s in stages:
        out.append(Collective(CollectiveKind.REDUCE_GRAD, s))
        if fsdp:
            out.append(Collective(CollectiveKind.RESHARD, s))
    return out
