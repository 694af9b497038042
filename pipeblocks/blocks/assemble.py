"""Squeeze a layout into a schedule, and the whole path from a block to a schedule.

:func:`squeeze` keeps each rank's passes in slot order and drops the slot numbers: the result is
an ordinary :class:`~pipeblocks.ir.Schedule`, and list execution
(:func:`pipeblocks.sim.simulate`) gives its real times under any cost model. Memory peaks are
unchanged (they depend only on each rank's order).

:func:`build` runs the CM recipe (Qi, Wan, Amar, Lin 2024, arXiv 2405.15362; docs/design.md,
"Generation rules" and "Lifespan and the peak bound"): fill the open W's, repeat, reorder
warm-up and cool-down, squeeze.

    >>> from pipeblocks.ir import Pass
    >>> from pipeblocks.blocks.block import BlockPass, BuildingBlock
    >>> block = BuildingBlock(num_ranks=2, period=4, passes=(
    ...     BlockPass(0, Pass.F, 0), BlockPass(1, Pass.F, 2), BlockPass(1, Pass.B, 3),
    ...     BlockPass(1, Pass.W, 4), BlockPass(0, Pass.B, 6), BlockPass(0, Pass.W, 7)))
    >>> print(build(block, 3))
    rank 0 | F0 F1 B0 W0 F2 B1 W1 B2 W2
    rank 1 | F0 B0 W0 F1 B1 W1 F2 B2 W2
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeblocks.blocks.block import BuildingBlock
from pipeblocks.blocks.layout import Layout, repeat
from pipeblocks.blocks.lifespan import MemoryModel
from pipeblocks.blocks.reordering import reorder as reorder_layout
from pipeblocks.ir.actions import Action
from pipeblocks.ir.bulk import no_gc
from pipeblocks.ir.schedule import Schedule

__all__ = ["squeeze", "build"]


def squeeze(layout: Layout, name: str = "") -> Schedule:
    """Each rank's passes in slot order, as a schedule."""
    block = layout.block
    n = len(block.passes)
    starts = layout.starts
    # A timed layout has at most one pass starting in each slot of a rank, so dropping each
    # pass into its slot's bucket orders a rank in O(passes + slots), with no sort.
    size = max(starts, default=-1) + 1
    rows: list[list[Action | None]] = [[None] * size for _ in range(block.num_ranks)]
    for op, bp in enumerate(block.passes):
        row, stage, kind = rows[block.pass_ranks[op]], bp.stage, bp.kind
        for mb, start in enumerate(starts[op::n]):
            row[start] = Action(stage, kind, mb)
    programs = tuple(tuple(a for a in row if a is not None) for row in rows)
    if sum(map(len, programs)) != len(starts):  # two passes share a slot: keep both, by sort
        programs = _squeeze_sorted(layout)
    return Schedule(layout.spec, programs, name)


def _squeeze_sorted(layout: Layout) -> tuple[tuple[Action, ...], ...]:
    """Rank programs by one stable sort of every pass by start (ties keep key order)."""
    block = layout.block
    n = len(block.passes)
    keys: list[list[int]] = [[] for _ in range(block.num_ranks)]
    for key in sorted(range(len(layout.starts)), key=layout.starts.__getitem__):
        keys[block.pass_ranks[key % n]].append(key)
    ops = block.passes
    return tuple(
        tuple(Action(ops[k % n].stage, ops[k % n].kind, k // n) for k in row) for row in keys
    )


def build(
    block: BuildingBlock,
    num_microbatches: int,
    *,
    reorder: bool = True,
    limit: float | Sequence[float] | None = None,
    costs: MemoryModel | None = None,
    name: str = "",
) -> Schedule:
    """Fill, repeat, reorder (unless ``reorder=False``) and squeeze ``block`` into a schedule.

    ``limit`` and ``costs`` go to :func:`~pipeblocks.blocks.reordering.reorder` (by default no rank
    holds more than the block's stable-phase peak in unit memory).
    """
    with no_gc():  # a few objects per pass, no cycles: see pipeblocks.ir.bulk
        layout = repeat(block, num_microbatches)
        if reorder:
            layout = reorder_layout(layout, limit, costs)
        return squeeze(layout, name)
