"""W-filling: the oldest pending W gets each free slot, in the stable phase."""

from __future__ import annotations

from collections import deque

import pytest

from pipeblocks.blocks import BlockPass, BuildingBlock, fill_w, free_slots
from pipeblocks.errors import SpecError
from pipeblocks.generators.vblocks import v_half_block, v_min_block, v_zb_block
from pipeblocks.ir import Pass, Placement


def one_rank(b0: int, period: int = 6) -> BuildingBlock:
    """Rank 0 holds stages 0 and 1 (loop placement, v=2): F0, F1, B1 at 0..2 and B0 at ``b0``."""
    return BuildingBlock(1, period, (
        BlockPass(0, Pass.F, 0), BlockPass(1, Pass.F, 1), BlockPass(1, Pass.B, 2),
        BlockPass(0, Pass.B, b0),
    ), stages_per_rank=2, placement=Placement.LOOP)


def brute_force_w_offsets(block: BuildingBlock, m: int) -> dict[int, int]:
    """Repeat the block for more than m microbatches, fill its W's slot by slot (oldest
    pending first) and return each stage's W offset in microbatch m-1. The extra microbatches
    keep m-1 in the middle: their passes take slots and their W's queue as they would forever.
    """
    T = block.period
    offsets: dict[int, int] = {}
    total = m + max(bp.end for bp in block.passes) // T + 2
    for rank in range(block.num_ranks):
        taken: set[int] = set()
        for bp in block.on_rank(rank):
            for k in range(total):
                taken.update(range(bp.offset + k * T, bp.end + k * T))
        stages = [s for s in block.open_stages if block.rank_of(s) == rank]
        arrivals = sorted(
            (block.backward(s).end + k * T, s, k) for s in stages for k in range(total)
        )
        if not stages:
            continue
        queue: deque[tuple[int, int]] = deque()
        t, i, target = min(a for a, _, _ in arrivals), 0, len(offsets) + len(stages)
        while len(offsets) < target:
            while i < len(arrivals) and arrivals[i][0] <= t:
                queue.append(arrivals[i][1:])
                i += 1
            width = block.w_duration
            if queue and all(u not in taken for u in range(t, t + width)):
                s, k = queue.popleft()
                taken.update(range(t, t + width))
                if k == m - 1:
                    offsets[s] = t - k * T
                t += width
            else:
                t += 1
    return offsets


def test_fill_takes_the_free_slot_after_each_b() -> None:
    """F0 F1 B1 B0 at slots 0..3: W1 (pending from 3) gets slot 4, W0 (from 4) slot 5."""
    block = fill_w(one_rank(3))
    assert block.is_closed
    assert block.get(1, Pass.W) == BlockPass(1, Pass.W, 4)
    assert block.get(0, Pass.W) == BlockPass(0, Pass.W, 5)


def test_fill_uses_the_stable_phase_not_the_first_microbatch() -> None:
    """Free slots 3 and 4; B0 ends at 6. Microbatch 0's W1 gets slot 3, but from then on slot
    3 goes to the older W0 of the previous microbatch: W0 at 3+6=9, W1 at 4."""
    block = fill_w(one_rank(5))
    assert free_slots(one_rank(5), 0) == (3, 4)
    assert block.get(0, Pass.W) == BlockPass(0, Pass.W, 9)
    assert block.get(1, Pass.W) == BlockPass(1, Pass.W, 4)
    assert brute_force_w_offsets(one_rank(5), 12) == {0: 9, 1: 4}


def test_closed_block_is_returned_unchanged() -> None:
    """A block with every W placed needs no filling."""
    block = fill_w(one_rank(3))
    assert fill_w(block) is block


def test_too_few_free_slots_is_a_spec_error() -> None:
    """Four passes and two W's cannot share a period of 5 slots on one rank."""
    with pytest.raises(SpecError, match="lengthen the period"):
        fill_w(one_rank(3, period=5))


def test_wide_ws_need_runs_of_free_slots() -> None:
    """Two-slot W's only start where two free slots follow each other."""
    block = BuildingBlock(1, 8, (
        BlockPass(0, Pass.F, 0), BlockPass(1, Pass.F, 1), BlockPass(1, Pass.B, 2),
        BlockPass(0, Pass.B, 3),
    ), stages_per_rank=2, w_duration=2)
    closed = fill_w(block)
    assert closed.get(1, Pass.W) == BlockPass(1, Pass.W, 4, 2)
    assert closed.get(0, Pass.W) == BlockPass(0, Pass.W, 6, 2)
    assert brute_force_w_offsets(block, 10) == {0: 6, 1: 4}


@pytest.mark.parametrize("make", [v_min_block, v_half_block, v_zb_block])
def test_v_blocks_fill_like_a_long_finite_repetition(make) -> None:  # type: ignore[no-untyped-def]
    """The steady W offsets equal those of the last microbatch of a long repetition."""
    for p in range(1, 11):
        block = make(p)
        closed = fill_w(block)
        want = brute_force_w_offsets(block, 4 * p + 12)
        got = {s: closed.get(s, Pass.W).offset for s in block.open_stages}  # type: ignore[union-attr]
        assert got == want, (make.__name__, p)


def test_v_zb_ws_follow_their_bs() -> None:
    """V-ZB's filled W's run right after their B's: ZB-V's stable pattern F0 B0 W0 F1 B1 W1."""
    for p in range(1, 17):
        closed = fill_w(v_zb_block(p))
        for s in range(2 * p):
            w, b = closed.get(s, Pass.W), closed.get(s, Pass.B)
            assert w is not None and b is not None and w.offset == b.end
