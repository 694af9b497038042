"""Building blocks: design a schedule as one microbatch's pattern, repeated every T slots.

The CM paper (Qi, Wan, Amar, Lin 2024, "Pipeline Parallelism with Controllable Memory", arXiv
2405.15362) builds schedules from a *building block*: the start slot of every pass of one
microbatch. Repeated every T slots it gives a pipeline whose peak memory follows from the
block's lifespans (docs/design.md, "Lifespan and the peak bound"). The path from a block to a
schedule:

- :class:`BuildingBlock` / :class:`BlockPass`: the pattern; :func:`check_block` and
  :func:`find_collision` say whether it can be repeated.
- :func:`fill_w`: every W left out gets the free slot the oldest-pending-first rule gives it.
- :func:`lifespans`, :func:`peak_bound`, :func:`stable_peak`: memory of the block.
- :func:`repeat` -> :class:`Layout` (every pass of m microbatches on a slot axis);
  :func:`layout_peak` its exact peak.
- :func:`reorder`: close warm-up and cool-down gaps without raising the peak.
- :func:`squeeze` -> :class:`~pipeblocks.ir.Schedule`; :func:`build` does all of the above.

A block of your own: two ranks, F's go down, B's come back, the W's are filled in::

    >>> from pipeblocks.blocks import BlockPass, BuildingBlock, build, peak_bound
    >>> from pipeblocks.ir import Pass, validate
    >>> block = BuildingBlock(num_ranks=2, period=3, passes=(
    ...     BlockPass(stage=0, kind=Pass.F, offset=0), BlockPass(1, Pass.F, 1),
    ...     BlockPass(1, Pass.B, 2), BlockPass(0, Pass.B, 4)))
    >>> print(block)
    rank 0 | F B .
    rank 1 | . F B
    >>> peak_bound(block)
    (2.0, 1.0)
    >>> schedule = build(block, num_microbatches=4, name="mine")
    >>> validate(schedule)
    >>> print(schedule)
    rank 0 | F0 F1 B0 W0 F2 B1 W1 F3 B2 W2 B3 W3
    rank 1 | F0 B0 W0 F1 B1 W1 F2 B2 W2 F3 B3 W3
"""

from pipeblocks.blocks.assemble import build, squeeze
from pipeblocks.blocks.block import (
    BlockPass,
    BuildingBlock,
    Collision,
    check_block,
    find_collision,
    free_slots,
)
from pipeblocks.blocks.fill import fill_w
from pipeblocks.blocks.layout import Layout, Placed, repeat
from pipeblocks.blocks.lifespan import (
    MemoryModel,
    layout_peak,
    lifespans,
    pass_memory,
    peak_bound,
    stable_peak,
    stage_memory,
)
from pipeblocks.blocks.reordering import reorder

__all__ = [
    "BlockPass",
    "BuildingBlock",
    "Collision",
    "Layout",
    "MemoryModel",
    "Placed",
    "build",
    "check_block",
    "fill_w",
    "find_collision",
    "free_slots",
    "layout_peak",
    "lifespans",
    "pass_memory",
    "peak_bound",
    "reorder",
    "repeat",
    "squeeze",
    "stable_peak",
    "stage_memory",
]
