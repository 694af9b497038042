"""Repeat a building block over m microbatches: a slot-timed layout.

:func:`repeat` places microbatch k's copy of every pass ``k * period`` slots after microbatch
0's, after checking that the copies never meet (:func:`~pipeblocks.blocks.block.check_block`).
The result, a :class:`Layout`, says on which slot each pass starts; slots are unit time steps of
the block, not real time (:func:`pipeblocks.blocks.assemble.squeeze` turns a layout into a
:class:`~pipeblocks.ir.Schedule` that any cost model can time).

    >>> from pipeblocks.ir import Pass
    >>> from pipeblocks.blocks.block import BlockPass, BuildingBlock
    >>> block = BuildingBlock(num_ranks=2, period=4, passes=(
    ...     BlockPass(0, Pass.F, 0), BlockPass(1, Pass.F, 1), BlockPass(1, Pass.B, 2),
    ...     BlockPass(1, Pass.W, 3), BlockPass(0, Pass.B, 5), BlockPass(0, Pass.W, 6)))
    >>> print(repeat(block, 3))
    rank 0 | F0  .  .  . F1 B0 W0  . F2 B1 W1  .  . B2 W2
    rank 1 |  . F0 B0 W0  . F1 B1 W1  . F2 B2 W2
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from pipeblocks.blocks.block import BlockPass, BuildingBlock, check_block
from pipeblocks.blocks.fill import fill_w
from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Action
from pipeblocks.ir.ascii import rows_text
from pipeblocks.ir.spec import PipelineSpec

__all__ = ["Placed", "Layout", "repeat"]


class Placed(NamedTuple):
    """One pass in a layout: ``block.passes[op]`` of microbatch ``mb``, starting at ``start``."""

    start: int
    mb: int
    op: int


@dataclass(frozen=True, slots=True)
class Layout:
    """Every pass of m microbatches on a slot axis.

    ``starts[mb * len(block.passes) + op]`` is the slot where pass ``block.passes[op]`` of
    microbatch ``mb`` starts (that index is the pass's *key*). One flat tuple of integers, not
    one object per pass: p=64, m=512 has 196,608 passes, and reorder works on the numbers.
    ``block`` is closed (every W has a slot): the block that was repeated, after
    :func:`~pipeblocks.blocks.fill.fill_w`.
    """

    block: BuildingBlock
    num_microbatches: int
    starts: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "starts", tuple(self.starts))
        if not self.block.is_closed:
            raise SpecError(
                f"a layout needs a closed block, but stages {list(self.block.open_stages)} "
                f"have no W; fill them with fill_w(block) (repeat() does)"
            )
        want = self.num_microbatches * len(self.block.passes)
        if len(self.starts) != want:
            raise SpecError(
                f"a layout of {self.num_microbatches} microbatches x {len(self.block.passes)} "
                f"passes needs {want} starts, got {len(self.starts)}"
            )

    @property
    def spec(self) -> PipelineSpec:
        return self.block.spec(self.num_microbatches)

    def key(self, mb: int, op: int) -> int:
        """The index of pass ``op`` of microbatch ``mb`` in :attr:`starts`."""
        return mb * len(self.block.passes) + op

    def order(self, rank: int) -> list[int]:
        """Rank ``rank``'s pass keys by start slot."""
        n = len(self.block.passes)
        ops = [i for i, r in enumerate(self.block.pass_ranks) if r == rank]
        keys = [k * n + op for k in range(self.num_microbatches) for op in ops]
        keys.sort(key=self.starts.__getitem__)
        return keys

    def row(self, rank: int) -> tuple[Placed, ...]:
        """Rank ``rank``'s passes by start slot."""
        n = len(self.block.passes)
        return tuple(Placed(self.starts[k], k // n, k % n) for k in self.order(rank))

    @property
    def rows(self) -> tuple[tuple[Placed, ...], ...]:
        return tuple(self.row(r) for r in range(self.block.num_ranks))

    def actions(self, rank: int) -> list[Action]:
        """Rank ``rank``'s actions in slot order (its program once squeezed)."""
        return [self.action(k) for k in self.order(rank)]

    def action(self, key: int) -> Action:
        n = len(self.block.passes)
        bp = self.block.passes[key % n]
        return Action(bp.stage, bp.kind, key // n)

    def end(self, key: int) -> int:
        """The first slot after pass ``key``."""
        return self.starts[key] + self.block.passes[key % len(self.block.passes)].duration

    @property
    def length(self) -> int:
        """The first slot after the last pass."""
        return max(self.end(k) for k in range(len(self.starts)))

    def span(self, rank: int) -> int:
        """Slots from the rank's first start to its last end (its share of the paper metric)."""
        keys = self.order(rank)
        return max(self.end(k) for k in keys) - self.starts[keys[0]] if keys else 0

    def __str__(self) -> str:
        """The slot axis: one cell per slot, ``.`` where the rank is idle."""
        one = self.block.stages_per_rank == 1
        cells_by_rank = []
        for row in self.rows:
            cells: list[str] = []
            for placed in row:
                cells.extend(["."] * (placed.start - len(cells)))
                bp = self.block.passes[placed.op]
                text = f"{bp.kind.value}{placed.mb}" if one else f"{bp.stage}{bp.kind.value}{placed.mb}"
                cells.extend([text] * bp.duration)
            cells_by_rank.append(cells)
        return rows_text(cells_by_rank)


def repeat(block: BuildingBlock, num_microbatches: int) -> Layout:
    """Repeat ``block`` every ``block.period`` slots for microbatches 0..m-1.

    An open block (W's left to fill) is closed first with
    :func:`~pipeblocks.blocks.fill.fill_w`. Raises
    :class:`~pipeblocks.errors.CollisionError` if copies collide and
    :class:`~pipeblocks.errors.ScheduleError` if the block breaks a dependency. Slots are shifted
    so that the earliest pass starts at slot 0.
    """
    if isinstance(num_microbatches, bool) or not isinstance(num_microbatches, int) or (
        num_microbatches < 1
    ):
        raise SpecError(f"num_microbatches must be an integer >= 1 (got {num_microbatches!r})")
    block = fill_w(block)  # a closed block comes back as it is
    check_block(block)
    T = block.period
    shift = min(bp.offset for bp in block.passes)
    block = block.with_passes(tuple(
        BlockPass(bp.stage, bp.kind, bp.offset - shift, bp.duration) for bp in block.passes
    ))
    offsets = [bp.offset for bp in block.passes]
    starts = [off + k * T for k in range(num_microbatches) for off in offsets]
    return Layout(block, num_microbatches, tuple(starts))
