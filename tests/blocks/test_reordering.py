"""Reordering warm-up and cool-down: fewer bubbles, never more memory than allowed."""

from __future__ import annotations

import pytest

from pipeblocks.blocks import (
    BlockPass,
    BuildingBlock,
    layout_peak,
    reorder,
    repeat,
    squeeze,
    stable_peak,
)
from pipeblocks.errors import SpecError
from pipeblocks.generators.vblocks import v_half_block, v_min_block, v_zb_block
from pipeblocks.ir import Pass, validate
from pipeblocks.sim import UniformCosts, simulate


def down_and_up() -> BuildingBlock:
    """Two ranks, period 4, a free slot after each F; W right after each B."""
    return BuildingBlock(2, 4, (
        BlockPass(0, Pass.F, 0), BlockPass(1, Pass.F, 2), BlockPass(1, Pass.B, 3),
        BlockPass(1, Pass.W, 4), BlockPass(0, Pass.B, 6), BlockPass(0, Pass.W, 7),
    ))


def test_reorder_pulls_passes_into_gaps() -> None:
    """Rank 0's second F moves into the warm-up gap (rank 0 may hold 2), rank 1 packs up."""
    layout = reorder(repeat(down_and_up(), 3))
    assert str(layout) == (
        "rank 0 | F0 F1  . B0 W0 F2 B1 W1  . B2 W2\n"
        "rank 1 |  . F0 B0 W0 F1 B1 W1 F2 B2 W2"
    )
    assert layout_peak(layout) == stable_peak(down_and_up()) == (2.0, 1.0)


def test_a_higher_limit_lets_rank_0_run_further_ahead() -> None:
    """Allowed three activations, rank 0 starts all three F's before its first B."""
    layout = reorder(repeat(down_and_up(), 3), limit=3)
    assert layout_peak(layout) == (3.0, 1.0)
    assert [str(a) for a in layout.actions(0)][:4] == ["0F0", "0F1", "0F2", "0B0"]


def test_limit_below_the_layout_is_an_error() -> None:
    """A limit the input layout itself breaks cannot be kept; the error says what to raise."""
    layout = repeat(v_zb_block(3), 9)
    with pytest.raises(SpecError, match="raise the limit to at least"):
        reorder(layout, limit=3)
    with pytest.raises(SpecError, match="one limit per rank"):
        reorder(layout, limit=[6.0, 6.0])


def test_default_limit_is_each_ranks_stable_peak() -> None:
    """V-Min at p=5: ranks 0 and 3 peak at 4 in the stable phase and stay there by default;
    with one limit for all they may rise to 6 like the others."""
    block = v_min_block(5)
    stable = stable_peak(block)
    assert stable == (4.0, 6.0, 6.0, 4.0, 6.0)
    assert layout_peak(reorder(repeat(block, 20))) == stable
    assert layout_peak(reorder(repeat(block, 20), limit=max(stable))) == (6.0,) * 5


@pytest.mark.parametrize("make", [v_min_block, v_half_block, v_zb_block])
def test_reorder_keeps_the_peak_and_removes_bubbles(make) -> None:  # type: ignore[no-untyped-def]
    """Per rank the peak stays at most the stable one; no rank's span grows and the bubble
    (paper metric, unit costs) drops."""
    for p, m in ((2, 4), (3, 7), (4, 8), (5, 12)):
        block = make(p)
        raw = repeat(block, m)
        done = reorder(raw)
        assert all(a <= b for a, b in zip(layout_peak(done), stable_peak(block), strict=True))
        validate(squeeze(done))
        before, after = simulate(squeeze(raw)), simulate(squeeze(done))
        assert after.bubble_rate <= before.bubble_rate
        assert all(a <= b for a, b in zip(after.span, before.span, strict=True))


def test_reorder_helps_where_memory_allows() -> None:
    """V-Min at p=3 and V-Half at p=4 lose part of their warm-up/cool-down bubble; V-ZB all."""
    for block, m in ((v_min_block(3), 7), (v_half_block(4), 8), (v_zb_block(4), 8)):
        raw = simulate(squeeze(repeat(block, m))).bubble_rate
        done = simulate(squeeze(reorder(repeat(block, m)))).bubble_rate
        assert done < raw - 0.03
    assert simulate(squeeze(reorder(repeat(v_zb_block(4), 8)))).bubble_rate == 0


def test_reorder_respects_a_memory_model() -> None:
    """With mem_w < mem_f (B frees part) the limit is met in that model's units."""
    costs = UniformCosts(mem_f=4.0, mem_w=1.0)
    block = v_half_block(4)
    layout = reorder(repeat(block, 16), costs=costs)
    assert all(
        a <= b for a, b in zip(layout_peak(layout, costs), stable_peak(block, costs), strict=True)
    )
    assert simulate(squeeze(layout), costs).peak_memory == layout_peak(layout, costs)


def test_an_invalid_layout_is_refused() -> None:
    """A hand-made layout whose passes overlap on a rank is not silently "reordered"."""
    from pipeblocks.blocks import Layout

    good = repeat(down_and_up(), 2)
    starts = list(good.starts)
    starts[good.key(1, 0)] = starts[good.key(0, 0)]  # F of microbatch 1 on top of microbatch 0's
    with pytest.raises(SpecError, match="valid timed layout"):
        reorder(Layout(good.block, 2, tuple(starts)))
