"""The building block: where and when every pass of one microbatch runs, in slots.

A :class:`BuildingBlock` (Qi, Wan, Amar, Lin 2024, "Pipeline Parallelism with Controllable
Memory", arXiv 2405.15362) gives, for each pass of microbatch 0, its start ``offset`` and its
``duration`` in slots; its rank comes from the placement. Microbatch k runs the same pattern
``k * period`` slots later. Repeating it is only possible when, on every rank, the slots the
passes occupy are distinct modulo the period (:func:`find_collision`), and it only describes a
real schedule when every pass starts after the passes it depends on (docs/design.md,
"Passes and dependencies"; :func:`check_block` checks both).

A stage that has a B but no W in the block leaves its W to be *filled* into the free slots of
its rank (:func:`pipeblocks.blocks.fill.fill_w`); such a block is *open*.

    >>> from pipeblocks.ir import Pass
    >>> block = BuildingBlock(num_ranks=2, period=3, passes=(
    ...     BlockPass(0, Pass.F, 0), BlockPass(1, Pass.F, 1),
    ...     BlockPass(1, Pass.B, 2), BlockPass(0, Pass.B, 4)))
    >>> block.open_stages
    (0, 1)
    >>> print(block)
    rank 0 | F B .
    rank 1 | . F B
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from pipeblocks.errors import CollisionError, ScheduleError, SpecError
from pipeblocks.ir.actions import Action, Pass
from pipeblocks.ir.ascii import rows_text
from pipeblocks.ir.spec import PipelineSpec, Placement

__all__ = ["BlockPass", "BuildingBlock", "Collision", "find_collision", "check_block"]


@dataclass(frozen=True, slots=True)
class BlockPass:
    """One pass of microbatch 0: ``kind`` of ``stage`` starts at slot ``offset`` for ``duration``."""

    stage: int
    kind: Pass
    offset: int
    duration: int = 1

    @property
    def end(self) -> int:
        """The first slot after the pass."""
        return self.offset + self.duration

    def label(self) -> str:
        """``3B`` (stage and letter, no microbatch)."""
        return f"{self.stage}{self.kind.value}"


@dataclass(frozen=True, slots=True)
class BuildingBlock:
    """A repeatable pattern: the passes of one microbatch, repeated every ``period`` slots.

    ``passes`` holds one F per stage and either BW, or B with an optional W (no W: the W is
    filled into a free slot later, see :func:`pipeblocks.blocks.fill.fill_w`; filled W's take
    ``w_duration`` slots). Ranks follow ``placement`` (see :class:`pipeblocks.ir.PipelineSpec`).
    """

    num_ranks: int
    period: int
    passes: tuple[BlockPass, ...]
    stages_per_rank: int = 1
    placement: Placement = Placement.LOOP
    w_duration: int = 1
    _index: dict[tuple[int, Pass], int] = field(init=False, repr=False, compare=False)
    _ranks: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "passes", tuple(self.passes))
        shape = self.spec(1)  # checks num_ranks, stages_per_rank and placement
        object.__setattr__(self, "placement", shape.placement)
        for name in ("period", "w_duration"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SpecError(f"building block {name} must be an integer >= 1 (got {value!r})")
        index: dict[tuple[int, Pass], int] = {}
        num_stages = shape.num_stages
        for i, bp in enumerate(self.passes):
            if not isinstance(bp, BlockPass) or not isinstance(bp.kind, Pass):
                raise SpecError(
                    f"building block passes must be BlockPass(stage, Pass.X, offset) (got {bp!r})"
                )
            if not 0 <= bp.stage < num_stages:
                raise SpecError(
                    f"building block pass {bp.label()} names stage {bp.stage}, outside "
                    f"0..{num_stages - 1}; fix the stage or the block's num_ranks"
                )
            for name in ("offset", "duration"):
                value = getattr(bp, name)
                if isinstance(value, bool) or not isinstance(value, int):
                    raise SpecError(f"pass {bp.label()}: {name} must be an integer (got {value!r})")
            if bp.duration < 1:
                raise SpecError(f"pass {bp.label()}: duration must be >= 1 slot (got {bp.duration})")
            if (bp.stage, bp.kind) in index:
                raise SpecError(f"building block has {bp.label()} twice; keep one")
            index[(bp.stage, bp.kind)] = i
        for s in range(num_stages):
            has = {k for k in Pass if (s, k) in index}
            if Pass.F not in has:
                raise SpecError(f"building block has no F for stage {s}; add BlockPass({s}, Pass.F, ...)")
            if (Pass.BW in has) == (Pass.B in has):
                raise SpecError(
                    f"stage {s} needs exactly one backward in the block: a BW, or a B (with an "
                    f"optional W); got {sorted(k.value for k in has - {Pass.F})}"
                )
            if Pass.W in has and Pass.BW in has:
                raise SpecError(f"stage {s} has both BW and W; drop the W (BW includes it)")
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_ranks", tuple(shape.rank_of(s) for s in range(num_stages)))

    def spec(self, num_microbatches: int) -> PipelineSpec:
        """The pipeline spec of this block repeated over ``num_microbatches``."""
        return PipelineSpec(self.num_ranks, num_microbatches, self.stages_per_rank, self.placement)

    @property
    def num_stages(self) -> int:
        return self.num_ranks * self.stages_per_rank

    def rank_of(self, stage: int) -> int:
        """The rank that runs ``stage`` under the block's placement."""
        if not 0 <= stage < len(self._ranks):
            raise SpecError(f"stage {stage} is out of range 0..{len(self._ranks) - 1}")
        return self._ranks[stage]

    @property
    def pass_ranks(self) -> tuple[int, ...]:
        """The rank of each of :attr:`passes`."""
        return tuple(self._ranks[bp.stage] for bp in self.passes)

    def get(self, stage: int, kind: Pass) -> BlockPass | None:
        """The pass ``kind`` of ``stage``, or None if the block lacks it (e.g. a W to fill)."""
        i = self._index.get((stage, kind))
        return None if i is None else self.passes[i]

    def backward(self, stage: int) -> BlockPass:
        """The pass that sends the input gradient of ``stage``: its B, or its BW."""
        bp = self.get(stage, Pass.B) or self.get(stage, Pass.BW)
        assert bp is not None  # __post_init__ guarantees one
        return bp

    def frees(self, stage: int) -> BlockPass | None:
        """The pass whose end frees the last of the stage's activation (W or BW); None if open."""
        return self.get(stage, Pass.W) or self.get(stage, Pass.BW)

    @property
    def open_stages(self) -> tuple[int, ...]:
        """Stages with a B but no W: their W's are still to be filled."""
        return tuple(
            s for s in range(self.num_stages) if (s, Pass.B) in self._index
            and (s, Pass.W) not in self._index
        )

    @property
    def is_closed(self) -> bool:
        """True when every pass has a slot (no W left to fill)."""
        return not self.open_stages

    def on_rank(self, rank: int) -> tuple[BlockPass, ...]:
        """The passes that run on ``rank``, by offset."""
        stages = set(self.spec(1).stages_of(rank))
        return tuple(sorted((bp for bp in self.passes if bp.stage in stages),
                            key=lambda bp: bp.offset))

    def with_passes(self, passes: tuple[BlockPass, ...]) -> BuildingBlock:
        """The same block shape with other passes."""
        return BuildingBlock(self.num_ranks, self.period, passes, self.stages_per_rank,
                             self.placement, self.w_duration)

    def deps(self, bp: BlockPass) -> Iterator[BlockPass]:
        """The passes of the same microbatch that ``bp`` waits for (docs/design.md, "Passes and
        dependencies")."""
        s = bp.stage
        if bp.kind is Pass.F:
            if s > 0:
                yield self.passes[self._index[(s - 1, Pass.F)]]
        elif bp.kind is Pass.W:
            yield self.backward(s)
        else:
            yield self.passes[self._index[(s, Pass.F)]]
            if s < self.num_stages - 1:
                yield self.backward(s + 1)

    def pattern(self, mark: tuple[int, int] | None = None) -> str:
        """One period per rank: the pass occupying each slot modulo the period, ``.`` if free.

        Cells show ``<stage><letter>`` (just the letter where a rank holds one stage);
        ``mark=(rank, slot)`` brackets one cell. Passes that collide share a cell: ``F|B``.
        """
        one = self.stages_per_rank == 1
        rows = []
        for rank in range(self.num_ranks):
            cells = ["."] * self.period
            for bp in self.on_rank(rank):
                text = bp.kind.value if one else bp.label()
                for t in range(bp.offset, bp.end):
                    r = t % self.period
                    cells[r] = text if cells[r] == "." else f"{cells[r]}|{text}"
            rows.append(cells)
        return rows_text(rows, mark)

    def __str__(self) -> str:
        return self.pattern()


@dataclass(frozen=True, slots=True)
class Collision:
    """Two passes of the repeated block that would occupy ``slot`` on ``rank`` at once.

    ``first`` (of microbatch ``first_mb``) and ``second`` (of ``second_mb``) both cover
    ``slot``; ``residue`` is the slot modulo the period.
    """

    rank: int
    slot: int
    residue: int
    first: BlockPass
    first_mb: int
    second: BlockPass
    second_mb: int

    def describe(self, period: int, free: tuple[int, ...]) -> str:
        a = Action(self.first.stage, self.first.kind, self.first_mb)
        b = Action(self.second.stage, self.second.kind, self.second_mb)
        where = ", ".join(map(str, free)) if free else "none"
        return (
            f"building block collides on rank {self.rank} at slot {self.slot}: {a} (offset "
            f"{self.first.offset}) and {b} (offset {self.second.offset}) both occupy it when "
            f"the block repeats every {period} slots (slot {self.residue} modulo {period}); move "
            f"one of them to a free slot modulo {period} (free on rank {self.rank}: {where}) "
            f"or lengthen the period"
        )


def _occupancy(block: BuildingBlock, rank: int) -> tuple[dict[int, BlockPass], Collision | None]:
    taken: dict[int, BlockPass] = {}
    T = block.period
    for bp in block.on_rank(rank):
        for t in range(bp.offset, bp.end):
            r = t % T
            other = taken.get(r)
            if other is not None:
                # Name the two passes by the microbatches that actually meet on slot s.
                s_other = next(u for u in range(other.offset, other.end) if u % T == r)
                if t >= s_other:
                    slot, first_mb, second_mb = t, (t - s_other) // T, 0
                else:
                    slot, first_mb, second_mb = s_other, 0, (s_other - t) // T
                return taken, Collision(rank, slot, r, other, first_mb, bp, second_mb)
            taken[r] = bp
    return taken, None


def free_slots(block: BuildingBlock, rank: int) -> tuple[int, ...]:
    """The slots 0..period-1 that no pass of ``rank`` covers modulo the period."""
    taken, _ = _occupancy(block, rank)
    return tuple(t for t in range(block.period) if t not in taken)


def find_collision(block: BuildingBlock) -> Collision | None:
    """The first collision of the repeated block (by rank), or None when it repeats cleanly."""
    for rank in range(block.num_ranks):
        _, hit = _occupancy(block, rank)
        if hit is not None:
            return hit
    return None


def check_block(block: BuildingBlock) -> None:
    """Raise if the block cannot be repeated into a schedule.

    - :class:`~pipeblocks.errors.CollisionError` (rule ``collision``) when two passes meet on a
      rank modulo the period; the message names both, the rank and the slot.
    - :class:`~pipeblocks.errors.ScheduleError` (rule ``dependency``) when a pass starts before
      a pass it depends on (same microbatch) has ended.
    """
    hit = find_collision(block)
    if hit is not None:
        raise CollisionError(
            hit.describe(block.period, free_slots(block, hit.rank)),
            rule="collision",
            rank=hit.rank,
            position=hit.slot,
            grid=block.pattern(mark=(hit.rank, hit.residue)),
        )
    for bp in block.passes:
        for dep in block.deps(bp):
            if bp.offset < dep.end:
                rank = block.rank_of(bp.stage)
                raise ScheduleError(
                    f"building block breaks a dependency: {bp.label()} (rank {rank}, offset "
                    f"{bp.offset}) starts before {dep.label()} (rank {block.rank_of(dep.stage)}) "
                    f"ends at slot {dep.end}; start {bp.label()} at slot {dep.end} or later",
                    rule="dependency",
                    rank=rank,
                    position=bp.offset,
                    grid=block.pattern(mark=(rank, bp.offset % block.period)),
                )
