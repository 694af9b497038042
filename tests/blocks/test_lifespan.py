"""Lifespans, the peak bound and exact peaks of building blocks, computed by hand."""

from __future__ import annotations

import pytest

from pipeblocks.blocks import (
    BlockPass,
    BuildingBlock,
    fill_w,
    layout_peak,
    lifespans,
    peak_bound,
    reorder,
    repeat,
    squeeze,
    stable_peak,
)
from pipeblocks.blocks.lifespan import cap_tolerance, per_rank_caps
from pipeblocks.errors import SpecError
from pipeblocks.generators import generate
from pipeblocks.generators.vblocks import v_half_block, v_zb_block
from pipeblocks.ir import Pass
from pipeblocks.search.refill import refill_w
from pipeblocks.search.tail import replan_tail
from pipeblocks.sim import UNIT, UniformCosts, simulate


def down_and_up() -> BuildingBlock:
    """Two ranks, period 4: F's down, B's back up, each W right after its B."""
    return BuildingBlock(2, 4, (
        BlockPass(0, Pass.F, 0), BlockPass(1, Pass.F, 1), BlockPass(1, Pass.B, 2),
        BlockPass(1, Pass.W, 3), BlockPass(0, Pass.B, 5), BlockPass(0, Pass.W, 6),
    ))


def one_f_one_b_block(p: int) -> BuildingBlock:
    """1F1B as a block: F(s) at slot s, a two-slot BW(s) at 3p-2-2s, period 3."""
    passes = []
    for s in range(p):
        passes += [BlockPass(s, Pass.F, s), BlockPass(s, Pass.BW, 3 * p - 2 - 2 * s, 2)]
    return BuildingBlock(p, 3, tuple(passes))


def test_lifespans_and_bound_by_hand() -> None:
    """Stage 0 lives 0..7 (W ends at 7), stage 1 lives 1..4: bounds ceil(7/4)=2 and ceil(3/4)=1."""
    block = down_and_up()
    assert lifespans(block) == (7, 3)
    assert peak_bound(block) == (2.0, 1.0)
    assert stable_peak(block) == (2.0, 1.0)


def test_one_f_one_b_block_bound_is_one_f_one_b_peak() -> None:
    """Stage s lives 3(p-s) slots, so rank s holds at most p-s activations, 1F1B's peak."""
    for p in range(1, 7):
        block = one_f_one_b_block(p)
        assert lifespans(block) == tuple(3 * (p - s) for s in range(p))
        assert peak_bound(block) == tuple(float(p - s) for s in range(p))
        assert stable_peak(block) == peak_bound(block)


def test_bound_counts_mem_f_and_stable_peak_counts_what_w_still_needs() -> None:
    """With mem_f=2, mem_w=0.5: bound 2*2; exact peak 4 (two whole activations at slots 0, 1)."""
    costs = UniformCosts(mem_f=2.0, mem_w=0.5)
    block = down_and_up()
    assert peak_bound(block, costs) == (4.0, 2.0)
    # Rank 0 over one period: t=0,1 -> two whole activations (4); t=2 -> one whole and one
    # waiting for W (2 + 0.5); t=3 -> one whole (2).
    assert stable_peak(block, costs) == (4.0, 2.0)


def test_bound_can_exceed_the_exact_peak() -> None:
    """V-ZB: lifespans 12p-3-6i and 6i+3 give a bound of 2p+1; the exact peak is 2p."""
    for p in range(1, 9):
        block = fill_w(v_zb_block(p))
        spans = lifespans(block)
        for i in range(p):
            assert spans[i] == 12 * p - 3 - 6 * i
            assert spans[2 * p - 1 - i] == 6 * i + 3
        assert peak_bound(block) == (2.0 * p + 1,) * p
        assert stable_peak(block) == (2.0 * p,) * p


def test_open_block_is_filled_before_its_lifespans_are_measured() -> None:
    """An open block's lifespans are those of its W-filled block."""
    block = BuildingBlock(2, 3, (
        BlockPass(0, Pass.F, 0), BlockPass(1, Pass.F, 1), BlockPass(1, Pass.B, 2),
        BlockPass(0, Pass.B, 4),
    ))
    assert lifespans(block) == lifespans(fill_w(block)) == (6, 3)
    assert peak_bound(block) == (2.0, 1.0)


@pytest.mark.parametrize("m", [1, 2, 3, 7])
def test_layout_peak_matches_the_simulator(m: int) -> None:
    """The order-only peak of a layout equals the simulated peak of its squeezed schedule."""
    costs = UniformCosts(mem_f=3.0, mem_w=1.0)
    for block in (down_and_up(), one_f_one_b_block(4), v_zb_block(3)):
        layout = repeat(block, m)
        assert layout_peak(layout, costs) == simulate(squeeze(layout), costs).peak_memory


def test_per_rank_caps_forms_and_the_wrong_count() -> None:
    """None takes the default, a number is every rank's cap, a list must hold one per rank."""
    assert per_rank_caps(None, 3, lambda: (1, 2, 3), "x") == [1.0, 2.0, 3.0]
    assert per_rank_caps(2, 3, lambda: (), "x") == [2.0, 2.0, 2.0]
    assert per_rank_caps([4, 5, 6], 3, lambda: (), "x") == [4.0, 5.0, 6.0]
    with pytest.raises(SpecError, match=r"x needs one limit per rank \(3\), got 2"):
        per_rank_caps([4, 5], 3, lambda: (), "x")
    assert cap_tolerance([0.5]) == 1e-9 and cap_tolerance([-4e9, 2.0]) == 4.0


@pytest.mark.parametrize("who", ["reorder", "refill_w", "replan_tail"])
def test_every_limit_taker_reads_a_limit_the_same_way(who: str) -> None:
    """reorder, refill_w and replan_tail share the limit rule and its error."""
    s = generate("v-half", 4, 8)
    run = {"reorder": lambda lim: reorder(repeat(v_half_block(4), 8), lim),
           "refill_w": lambda lim: refill_w(s, UNIT, lim),
           "replan_tail": lambda lim: replan_tail(s, UNIT, limit=lim)}[who]
    with pytest.raises(SpecError, match=rf"{who} needs one limit per rank \(4\), got 3"):
        run([9.0, 9.0, 9.0])
