"""Repeating a block into a layout, squeezing it into a schedule, and build()."""

from __future__ import annotations

import pytest

from pipeblocks.blocks import BlockPass, BuildingBlock, Placed, build, fill_w, repeat, squeeze
from pipeblocks.blocks.layout import Layout
from pipeblocks.errors import SpecError
from pipeblocks.generators import generate
from pipeblocks.ir import Action, Pass, validate


def one_f_one_b_block(p: int) -> BuildingBlock:
    """1F1B as a block: F(s) at slot s, a two-slot BW(s) at 3p-2-2s, period 3."""
    passes = []
    for s in range(p):
        passes += [BlockPass(s, Pass.F, s), BlockPass(s, Pass.BW, 3 * p - 2 - 2 * s, 2)]
    return BuildingBlock(p, 3, tuple(passes))


def test_repeat_places_microbatch_k_k_periods_later() -> None:
    """Every copy starts at offset + k*T, shifted so the earliest pass is at slot 0."""
    block = BuildingBlock(2, 4, (
        BlockPass(0, Pass.F, 5), BlockPass(1, Pass.F, 6), BlockPass(1, Pass.BW, 7),
        BlockPass(0, Pass.BW, 8),
    ))
    layout = repeat(block, 3)
    assert [bp.offset for bp in layout.block.passes] == [0, 1, 2, 3]
    for k in range(3):
        for op, want in enumerate([0, 1, 2, 3]):
            assert layout.starts[layout.key(k, op)] == want + 4 * k
    assert layout.row(0) == (Placed(0, 0, 0), Placed(3, 0, 3), Placed(4, 1, 0), Placed(7, 1, 3),
                             Placed(8, 2, 0), Placed(11, 2, 3))
    assert layout.length == 12 and layout.span(0) == 12 and layout.span(1) == 10
    assert [str(a) for a in layout.actions(1)] == ["1F0", "1BW0", "1F1", "1BW1", "1F2", "1BW2"]
    assert layout.action(layout.key(2, 3)) == Action(0, Pass.BW, 2)


def test_repeat_fills_an_open_block_first() -> None:
    """An open block is W-filled before it is repeated; the layout carries the closed block."""
    block = BuildingBlock(2, 3, (
        BlockPass(0, Pass.F, 0), BlockPass(1, Pass.F, 1), BlockPass(1, Pass.B, 2),
        BlockPass(0, Pass.B, 4),
    ))
    layout = repeat(block, 2)
    assert layout.block == fill_w(block)
    assert str(layout) == (
        "rank 0 | F0  .  . F1 B0 W0  . B1 W1\n"
        "rank 1 |  . F0 B0 W0 F1 B1 W1"
    )


@pytest.mark.parametrize("m", [0, -1, 2.0, True])
def test_repeat_needs_a_positive_microbatch_count(m: object) -> None:
    """m must be an integer >= 1."""
    block = one_f_one_b_block(2)
    with pytest.raises(SpecError, match="num_microbatches"):
        repeat(block, m)  # type: ignore[arg-type]


def test_squeeze_keeps_slot_order() -> None:
    """The schedule lists each rank's passes in slot order, with the block's spec."""
    layout = repeat(one_f_one_b_block(3), 4)
    schedule = squeeze(layout, name="x")
    assert schedule.name == "x" and schedule.spec == layout.spec
    for rank in range(3):
        assert list(schedule.programs[rank]) == list(layout.actions(rank))
    validate(schedule)


def test_one_f_one_b_block_builds_one_f_one_b() -> None:
    """Repeating the 1F1B block and reordering its warm-up gives exactly the 1f1b generator."""
    for p in range(1, 7):
        for m in range(1, 3 * p + 3):
            built = build(one_f_one_b_block(p), m)
            assert built.programs == generate("1f1b", p, m).programs, (p, m)


def test_build_without_reorder_is_the_squeezed_repetition() -> None:
    """reorder=False skips only the reorder step."""
    block = one_f_one_b_block(3)
    assert build(block, 5, reorder=False) == squeeze(repeat(block, 5))


def test_squeeze_keeps_both_passes_of_a_shared_slot() -> None:
    """Two passes of a rank starting in the same slot (not a timed layout, but squeeze must
    lose nothing): both are kept, in key order."""
    block = fill_w(one_f_one_b_block(2))
    layout = repeat(block, 2)
    clash = Layout(layout.block, 2, (0,) * len(layout.starts))
    schedule = squeeze(clash)
    assert sum(len(p) for p in schedule.programs) == len(layout.starts)
    for rank in range(2):
        assert list(schedule.programs[rank]) == clash.actions(rank)
