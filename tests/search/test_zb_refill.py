"""The ZB memory-limited heuristic and the cost-aware W placement."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate
from pipeblocks.ir import Pass, PipelineSpec, validate
from pipeblocks.search.refill import program_peaks, refill_w
from pipeblocks.search.zb import WARMUPS, zb_memory_limited
from pipeblocks.sim import UNIT, UniformCosts, simulate
from pipeblocks.sim.tables import tables

COSTS = st.builds(
    UniformCosts,
    f=st.sampled_from([1.0, 2.0, 3.0]), b=st.sampled_from([1.0, 2.0, 4.0]),
    w=st.sampled_from([0.5, 1.0, 2.0]), comm=st.sampled_from([0.0, 0.25, 1.0]),
)


@pytest.mark.parametrize("p,m", [(2, 4), (3, 4), (4, 8), (6, 12), (8, 9)])
def test_depth_warmup_at_1f1b_memory_is_zb_h1(p: int, m: int) -> None:
    """With unit costs and p activations per rank, the 'depth' rule rebuilds ZB-H1 exactly."""
    s = zb_memory_limited(PipelineSpec(p, m), UNIT, limit=p, warmup="depth")
    assert s.programs == generate("zb-h1", p, m).programs


@pytest.mark.parametrize("p", [2, 4, 8])
def test_twice_the_memory_is_zero_bubble(p: int) -> None:
    """ZB-2P: at 2p - 1 activations per rank, unit costs, m >= 2p - 1: no bubble (paper
    metric), like ZB-H2."""
    s = zb_memory_limited(PipelineSpec(p, 3 * p), UNIT, limit=2 * p - 1, warmup="depth")
    sim = simulate(s)
    assert sim.bubble_rate == 0.0
    assert max(sim.peak_memory) <= 2 * p - 1


@given(p=st.integers(1, 6), m=st.integers(1, 12), costs=COSTS, extra=st.integers(0, 12),
       slack=st.sampled_from([0.0, 0.5, 1.0]), warmup=st.sampled_from(WARMUPS))
def test_heuristic_is_valid_and_keeps_the_limit(p, m, costs, extra, slack, warmup) -> None:  # type: ignore[no-untyped-def]
    """Any costs, any limit from one activation up: a valid schedule within the limit."""
    limit = 1.0 + extra / 2
    s = zb_memory_limited(PipelineSpec(p, m), costs, limit, slack=slack, warmup=warmup)
    validate(s)
    assert max(simulate(s, costs).peak_memory) <= limit


def test_heuristic_uses_the_costs() -> None:
    """At 1F1B's memory with F=3, B=4, W=2 and transfers, the best rule is no slower than
    ZB-H1 and beats 1F1B; the W's land in different places than with unit costs."""
    costs = UniformCosts(f=3, b=4, w=2, comm=0.5)
    spec = PipelineSpec(8, 32)
    made = {(w, sl): zb_memory_limited(spec, costs, 8, slack=sl, warmup=w)
            for w in WARMUPS for sl in (0.0, 1.0)}
    best = min(simulate(s, costs).makespan for s in made.values())
    assert best <= simulate(generate("zb-h1", 8, 32), costs).makespan
    assert best < simulate(generate("1f1b", 8, 32), costs).makespan
    unit = zb_memory_limited(spec, UNIT, 8, slack=0.0, warmup="fill")
    assert made[("fill", 0.0)].programs != unit.programs


def test_heuristic_errors_name_the_fix() -> None:
    """Below one activation per rank, or on the wrong placement: a SpecError saying what to do."""
    with pytest.raises(SpecError, match="at least 1"):
        zb_memory_limited(PipelineSpec(4, 8), UNIT, limit=0.5)
    with pytest.raises(SpecError, match="placement 'loop'"):
        zb_memory_limited(PipelineSpec(4, 8, 2, "v"), UNIT, limit=8)
    with pytest.raises(SpecError, match="warm-up rule"):
        zb_memory_limited(PipelineSpec(4, 8), UNIT, limit=4, warmup="eager")


@given(name=st.sampled_from(["v-half", "v-min", "v-zb", "zb-h1", "1f1b-v", "zb-v"]),
       p=st.integers(2, 6), m=st.integers(1, 14), costs=COSTS,
       slack=st.sampled_from([0.0, 1.0, 3.0]))
def test_refill_keeps_f_b_order_and_memory(name, p, m, costs, slack) -> None:  # type: ignore[no-untyped-def]
    """refill_w only moves W's: each rank's F/B/BW order is unchanged, the result is valid and
    no rank holds more than it did."""
    s = generate(name, p, m)
    out = refill_w(s, costs, slack=slack)
    validate(out)
    for before, after in zip(s.programs, out.programs, strict=True):
        assert [a for a in before if a.kind is not Pass.W] == \
            [a for a in after if a.kind is not Pass.W]
        assert sorted(map(str, before)) == sorted(map(str, after))
    tab = tables(s.spec, costs)
    assert all(a <= b + 1e-9 for a, b in zip(program_peaks(out, tab), program_peaks(s, tab),
                                              strict=True))


def test_refill_fills_real_gaps() -> None:
    """Under F=3, B=4, W=2 and transfers, V-Half's slot-placed W's cost time; re-placed for
    the real gaps they cost less, within the same memory."""
    costs = UniformCosts(f=3, b=4, w=2, comm=0.5)
    s = generate("v-half", 8, 32)
    before, after = simulate(s, costs), simulate(refill_w(s, costs), costs)
    assert after.makespan < before.makespan
    assert max(after.peak_memory) <= max(before.peak_memory)


def test_refill_limit_below_the_schedule_is_an_error() -> None:
    """A limit the F/B order cannot keep is a SpecError that says to raise it."""
    with pytest.raises(SpecError, match="raise the limit"):
        refill_w(generate("v-zb", 4, 8), UNIT, limit=2)
