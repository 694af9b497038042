"""The schedule: a spec plus one ordered program of actions per rank.

A schedule is data. Idle time is not stored (no ``None`` cells): it comes out of the simulator.

    >>> from pipeblocks.ir import Action, Pass, PipelineSpec, Schedule
    >>> spec = PipelineSpec(num_ranks=2, num_microbatches=1)
    >>> s = Schedule(spec, (
    ...     (Action(0, Pass.F, 0), Action(0, Pass.BW, 0)),
    ...     (Action(1, Pass.F, 0), Action(1, Pass.BW, 0)),
    ... ), name="tiny")
    >>> print(s)
    rank 0 |  F0 BW0
    rank 1 |  F0 BW0
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from pipeblocks.checks import expect
from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Action
from pipeblocks.ir.moves import Offload
from pipeblocks.ir.spec import PipelineSpec

__all__ = ["Schedule", "check_stages"]


@dataclass(frozen=True, slots=True)
class Schedule:
    """``programs[r]`` is rank r's ordered tuple of actions; ``name`` says where it came from;
    ``recompute``: the stages that keep only their input between F and B and re-run their
    forward at the start of B (docs/memory.md; :mod:`pipeblocks.ir.recompute`). Equality, like
    for ``name``, compares spec and programs only (the torch CSV keeps those and drops the
    recompute choice); compare ``recompute`` itself where it matters."""

    spec: PipelineSpec
    programs: tuple[tuple[Action, ...], ...]
    name: str = field(default="", compare=False)
    recompute: frozenset[int] = field(default=frozenset(), compare=False)
    offload: Offload | None = field(default=None, compare=False)  # ir/offload.py

    def __post_init__(self) -> None:
        expect("Schedule", "spec", self.spec, PipelineSpec)
        expect("Schedule", "name", self.name, str)
        if isinstance(self.programs, str | bytes) or not isinstance(self.programs, Iterable):
            expect("Schedule", "programs", self.programs, tuple)
        progs = tuple(_program(r, p) for r, p in enumerate(self.programs))
        object.__setattr__(self, "programs", progs)
        if len(progs) != self.spec.num_ranks:
            raise SpecError(
                f"a schedule needs one program per rank: {self.spec.num_ranks} ranks but "
                f"{len(progs)} programs"
            )
        if type(self.recompute) is not frozenset or self.recompute:
            object.__setattr__(self, "recompute", check_stages(self.spec, self.recompute))
        if self.offload is not None:
            expect("Schedule", "offload", self.offload, Offload)

    @classmethod
    def from_lists(
        cls, spec: PipelineSpec, programs: Sequence[Iterable[Action]], name: str = ""
    ) -> Schedule:
        """Build from any per-rank iterables of actions."""
        return cls(spec, tuple(tuple(p) for p in programs), name)

    @property
    def num_actions(self) -> int:
        return sum(len(p) for p in self.programs)

    def actions(self) -> Iterator[tuple[int, int, Action]]:
        """Every ``(rank, position, action)`` in program order, rank by rank."""
        for rank, prog in enumerate(self.programs):
            for pos, a in enumerate(prog):
                yield rank, pos, a

    def renamed(self, name: str) -> Schedule:
        return Schedule(self.spec, self.programs, name, self.recompute, self.offload)

    def __str__(self) -> str:
        from pipeblocks.ir.ascii import grid

        return grid(self)


def _program(rank: int, program: Iterable[Action]) -> tuple[Action, ...]:
    """One rank's program as a tuple, every item an Action (else an ArgTypeError naming it)."""
    if isinstance(program, str | bytes) or not isinstance(program, Iterable):
        expect("Schedule", f"programs[{rank}]", program, tuple)
    prog = tuple(program)
    if not all(type(a) is Action for a in prog):  # the fast test; the careful one names it
        for i, a in enumerate(prog):
            expect("Schedule", f"programs[{rank}][{i}]", a, Action)
    return prog


def check_stages(spec: PipelineSpec, stages: object) -> frozenset[int]:
    """``stages`` as a frozenset of stage indices in 0..S-1 (else a SpecError naming the bad
    one)."""
    if isinstance(stages, str | bytes) or not isinstance(stages, Iterable):
        expect("Schedule", "recompute", stages, frozenset)
    out = []
    for s in stages:  # type: ignore[attr-defined]
        if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < spec.num_stages:
            raise SpecError(
                f"recompute names stage {s!r}, but {spec.describe()} has stages "
                f"0..{spec.num_stages - 1}; name stages in that range"
            )
        out.append(s)
    return frozenset(out)
