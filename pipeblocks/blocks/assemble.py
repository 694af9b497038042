"""Squeeze a layout into a schedule, and the whole path from a block to a schedule.

:func:`squeeze` keeps each rank's passes in slot order and drops the slot numbers: the result is
an ordinary :class:`~pipeblocks.ir.Schedule`, and list execution
(:func:`pipeblocks.sim.simulate`) gives its real times under any cost model. Memory peaks are
unchanged (they depend only on each rank's order).

:func:`build` runs the CM recipe (Qi, Wan, Amar, Lin 2024, arXiv 2405.15362; shared/DESIGN.md
sections 6 and 7): fill the open W's, repeat, reorder warm-up and cool-down, squeeze.

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
from pipeblocks.ir.schedule import Schedule

__all__ = ["squeeze", "build"]


def squeeze(layout: Layout, name: str = "") -> Schedule:
    """Each rank's passes in slot order, as a schedule."""
    block = layout.block
    n = len(block.passes)
    ranks = block.pass_ranks
    stages = [bp.stage for bp in block.passes]
    kinds = [bp.kind for bp in block.passes]
    keys: list[list[int]] = [[] for _ in range(block.num_ranks)]
    starts = layout.starts
    # One sort of every pass by start gives each rank's passes in slot order.
    for key in sorted(range(len(starts)), key=starts.__getitem__):
        keys[ranks[key % n]].append(key)
    programs = [
        tuple(map(Action, [stages[k % n] for k in row], [kinds[k % n] for k in row],
                  [k // n for k in row]))
        for row in keys
    ]
    return Schedule(layout.spec, tuple(programs), name)


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
    layout = repeat(block, num_microbatches)
    if reorder:
        layout = reorder_layout(layout, limit, costs)
    return squeeze(layout, name)
