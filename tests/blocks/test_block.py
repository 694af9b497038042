"""Building blocks: construction checks, collisions and dependency checks."""

from __future__ import annotations

import pytest

from pipeblocks.blocks import (
    BlockPass,
    BuildingBlock,
    build,
    check_block,
    find_collision,
    free_slots,
    repeat,
)
from pipeblocks.errors import CollisionError, ScheduleError, SpecError
from pipeblocks.ir import Pass, Placement


def two_rank(b0: int, period: int = 3) -> BuildingBlock:
    """F's go down two ranks, B's come back; stage 0's B at slot ``b0``; W's left to fill."""
    return BuildingBlock(
        num_ranks=2,
        period=period,
        passes=(
            BlockPass(0, Pass.F, 0),
            BlockPass(1, Pass.F, 1),
            BlockPass(1, Pass.B, 2),
            BlockPass(0, Pass.B, b0),
        ),
    )


def test_clean_block_has_no_collision_and_lists_free_slots() -> None:
    """A block whose passes are distinct modulo the period passes the check; free slots are the rest."""
    block = two_rank(4)
    assert find_collision(block) is None
    check_block(block)
    assert free_slots(block, 0) == (2,)
    assert free_slots(block, 1) == (0,)
    assert block.open_stages == (0, 1)
    assert not block.is_closed


def test_colliding_user_block_is_rejected_naming_both_passes() -> None:
    """Stage 0's B at slot 3 meets its F of the next microbatch (slot 3 = 0 mod 3) on rank 0."""
    block = two_rank(3)
    hit = find_collision(block)
    assert hit is not None
    assert (hit.rank, hit.slot, hit.residue) == (0, 3, 0)
    assert {hit.first.kind, hit.second.kind} == {Pass.F, Pass.B}
    with pytest.raises(CollisionError) as err:
        repeat(block, 4)
    e = err.value
    assert e.rule == "collision" and e.rank == 0 and e.position == 3
    text = e.headline
    # Both passes by name (F of microbatch 1, B of microbatch 0), the rank, the slot, the fix.
    assert "0F1" in text and "0B0" in text
    assert "rank 0" in text and "slot 3" in text
    assert "free on rank 0: 1, 2" in text and "lengthen the period" in text
    # The grid shows one period per rank with the clashing cell marked.
    assert e.grid.splitlines()[0] == "rank 0 |[F|B]  .   ."


def test_collision_of_long_passes_is_found_on_a_covered_slot() -> None:
    """A two-slot pass collides on its second slot with a pass of a later microbatch."""
    block = BuildingBlock(1, 3, (BlockPass(0, Pass.F, 0, 2), BlockPass(0, Pass.BW, 2, 2)))
    hit = find_collision(block)
    assert hit is not None and hit.residue == 0
    assert sorted([hit.first.kind.value, hit.second.kind.value]) == ["BW", "F"]
    # BW covers slots 2 and 3; slot 3 is the F of microbatch 1 (offset 0 + 3).
    assert hit.slot == 3
    with pytest.raises(CollisionError, match="0F1"):
        check_block(block)


def test_broken_dependency_is_a_schedule_error() -> None:
    """A B that starts before the B of the next stage has ended is rejected with the fix."""
    block = BuildingBlock(
        2, 6, (BlockPass(0, Pass.F, 0), BlockPass(1, Pass.F, 1), BlockPass(1, Pass.B, 3),
               BlockPass(0, Pass.B, 2))
    )
    with pytest.raises(ScheduleError) as err:
        check_block(block)
    assert err.value.rule == "dependency"
    assert "0B" in err.value.headline and "1B" in err.value.headline
    assert "slot 4 or later" in err.value.headline


@pytest.mark.parametrize(
    "passes, words",
    [
        ((BlockPass(0, Pass.F, 0), BlockPass(1, Pass.F, 1), BlockPass(1, Pass.B, 2)), "stage 0"),
        ((BlockPass(0, Pass.F, 0), BlockPass(0, Pass.F, 1)), "twice"),
        ((BlockPass(0, Pass.F, 0), BlockPass(0, Pass.BW, 1), BlockPass(0, Pass.W, 2)), "BW and W"),
        ((BlockPass(0, Pass.F, 0), BlockPass(0, Pass.B, 1), BlockPass(0, Pass.BW, 2)), "exactly one"),
        ((BlockPass(0, Pass.F, 0), BlockPass(3, Pass.BW, 1)), "outside"),
        ((BlockPass(0, Pass.F, 0), BlockPass(0, Pass.BW, 1, 0)), "duration"),
    ],
)
def test_malformed_blocks_are_spec_errors(passes: tuple[BlockPass, ...], words: str) -> None:
    """Missing, doubled or contradictory passes fail at construction, saying which."""
    num_ranks = 2 if any(bp.stage == 1 for bp in passes) else 1
    with pytest.raises(SpecError, match=words):
        BuildingBlock(num_ranks, 4, passes)


def test_bad_period_and_placement_are_spec_errors() -> None:
    """Period 0 and a V placement without 2 stages per rank are refused."""
    ok = (BlockPass(0, Pass.F, 0), BlockPass(0, Pass.BW, 1))
    with pytest.raises(SpecError, match="period"):
        BuildingBlock(1, 0, ok)
    with pytest.raises(SpecError, match="stages_per_rank"):
        BuildingBlock(1, 2, ok, stages_per_rank=1, placement=Placement.V)


def test_v_placement_ranks_and_pattern() -> None:
    """Under the V placement stage s runs on rank s or 2p-1-s; the pattern shows stage labels."""
    block = BuildingBlock(
        2, 6,
        tuple(BlockPass(s, Pass.F, s) for s in range(4))
        + tuple(BlockPass(s, Pass.BW, 4 + (3 - s)) for s in range(4)),
        stages_per_rank=2, placement="v",  # type: ignore[arg-type]
    )
    assert [block.rank_of(s) for s in range(4)] == [0, 1, 1, 0]
    assert block.pass_ranks[:4] == (0, 1, 1, 0)
    assert find_collision(block) is None
    assert block.pattern() == (
        "rank 0 |  0F 0BW   .  3F 3BW   .\n"
        "rank 1 | 1BW  1F  2F   .   . 2BW"
    )


def test_user_block_builds_a_valid_schedule() -> None:
    """The module's example: a user block goes all the way to a schedule that validates."""
    from pipeblocks.ir import validate

    schedule = build(two_rank(4), 5, name="mine")
    validate(schedule)
    assert schedule.name == "mine"
    assert schedule.num_actions == 2 * 5 * 3
