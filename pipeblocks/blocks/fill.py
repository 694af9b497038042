"""W-filling: give every W left open in a building block a free slot of its rank.

The rule (docs/design.md, "Generation rules"): each free slot of a rank gets the oldest
pending W, where a W is pending once its B has ended. Applied to the block repeated forever,
the first-in first-out queue of pending W's settles into a pattern that repeats every period;
:func:`fill_w` runs the queue until it does and writes that steady pattern back into the block
as W offsets.
A W thus lands in the same free slot (modulo the period) for every microbatch, and the block's
lifespans and peak bound (:mod:`pipeblocks.blocks.lifespan`) are those of the stable phase.

    >>> from pipeblocks.ir import Pass
    >>> from pipeblocks.blocks.block import BlockPass, BuildingBlock
    >>> block = BuildingBlock(num_ranks=2, period=3, passes=(
    ...     BlockPass(0, Pass.F, 0), BlockPass(1, Pass.F, 1),
    ...     BlockPass(1, Pass.B, 2), BlockPass(0, Pass.B, 4)))
    >>> closed = fill_w(block)
    >>> closed.get(0, Pass.W), closed.get(1, Pass.W)
    (BlockPass(stage=0, kind=<Pass.W: 'W'>, offset=5, duration=1), BlockPass(stage=1, kind=<Pass.W: 'W'>, offset=3, duration=1))
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache

from pipeblocks.blocks.block import BlockPass, BuildingBlock, check_block, free_slots
from pipeblocks.errors import SpecError
from pipeblocks.ir.actions import Pass

__all__ = ["fill_w"]


def fill_w(block: BuildingBlock) -> BuildingBlock:
    """The block with a W (``block.w_duration`` slots) for every open stage, first in first out.

    A closed block comes back unchanged. Raises :class:`~pipeblocks.errors.SpecError` when a
    rank's free slots cannot keep up with its W's (the fix: lengthen the period or free slots),
    and what :func:`~pipeblocks.blocks.block.check_block` raises for a block that cannot repeat.
    """
    if block.is_closed:
        return block
    return _fill(block)


@lru_cache(maxsize=1024)  # a search asks for the same block's lifespans, bound and peaks
def _fill(block: BuildingBlock) -> BuildingBlock:
    check_block(block)
    added = []
    for rank in range(block.num_ranks):
        stages = [s for s in block.open_stages if block.rank_of(s) == rank]
        if not stages:
            continue
        free = free_slots(block, rank)
        arrivals = [(block.backward(s).end, s) for s in stages]
        offsets = _steady_fifo(block.period, block.w_duration, frozenset(free), arrivals, rank)
        added += [BlockPass(s, Pass.W, offsets[s], block.w_duration) for s in stages]
    return block.with_passes(block.passes + tuple(added))


def _steady_fifo(
    period: int, width: int, free: frozenset[int], arrivals: list[tuple[int, int]], rank: int
) -> dict[int, int]:
    """W offset per stage in the periodic regime of the first-in first-out fill on one rank.

    ``arrivals`` holds (slot where the stage's B ends, stage) for microbatch 0; microbatch k's
    W becomes pending ``k * period`` slots later. A W of ``width`` slots needs that many free
    slots in a row (modulo the period).
    """
    T = period
    need = width * len(arrivals)
    if len(free) < need:
        raise SpecError(
            f"rank {rank} has {len(free)} free slot(s) per period of {T} but its "
            f"{len(arrivals)} W's need {need}; lengthen the period or move passes off rank {rank}"
        )
    fits = [all((t + u) % T in free for u in range(width)) for t in range(T)]
    by_residue: dict[int, list[tuple[int, int]]] = {}
    for end, s in sorted(arrivals):
        by_residue.setdefault(end % T, []).append((end, s))
    end_of = {s: e for e, s in arrivals}
    first = min(end_of.values())
    warm = max(end_of.values())  # from here on every stage's W arrives once a period
    # The queue only grows while a free slot finds it empty, and stops growing once it holds a
    # period's worth of W's, so it settles within about len(arrivals) periods of `warm`; the
    # margin covers serving one settled W per stage after that.
    max_periods = (warm - first) // T + 4 * len(arrivals) + 16
    queue: deque[tuple[int, int]] = deque()  # (stage, microbatch), oldest first
    busy_until = first
    seen: tuple[object, ...] | None = None
    settled_at: int | None = None
    result: dict[int, int] = {}
    t = first
    while t < first + max_periods * T:
        if (t - first) % T == 0 and t >= warm + T and settled_at is None:
            # The future only depends on this state (relative to t): compare with a period ago.
            ages = tuple((s, t - end_of[s] - k * T) for s, k in queue)
            state = (ages, max(0, busy_until - t))
            if state == seen:
                settled_at = t - T
            seen = state
        for end, s in by_residue.get(t % T, ()):
            if t >= end:
                queue.append((s, (t - end) // T))
        if t >= busy_until and queue and fits[t % T]:
            s, k = queue.popleft()
            busy_until = t + width
            if settled_at is not None and end_of[s] + k * T >= settled_at:
                result.setdefault(s, t - k * T)
                if len(result) == len(arrivals):
                    return result
        t += 1
    raise SpecError(
        f"the W's of rank {rank} never settle into the free slots {sorted(free)} of a period "
        f"of {T} (W width {width}); lengthen the period or leave more free slots"
    )

