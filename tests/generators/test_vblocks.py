"""V-Min, V-Half and V-ZB: the CM paper's peaks and bubbles (docs/design.md)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeblocks.blocks import fill_w, find_collision, stable_peak
from pipeblocks.errors import SpecError
from pipeblocks.generators import generate, get
from pipeblocks.generators.vblocks import v_half_block, v_min_block, v_zb_block
from pipeblocks.ir import Pass, Placement, validate
from pipeblocks.sim import simulate

NAMES = ("v-min", "v-half", "v-zb")


def one_f_one_b_bubble(p: int, m: int) -> float:
    """1F1B's bubble rate, paper metric, unit costs (docs/design.md, "Closed forms")."""
    return (p - 1) / (m + p - 1)


def v_min_peak(p: int) -> float:
    return (p + 4) // 3 / p


def v_half_peak(p: int) -> float:
    return (p + 2) // 2 / p


@pytest.mark.parametrize("p", [4, 6, 8, 16])
@pytest.mark.parametrize("times", [2, 4])
def test_v_min_and_v_half_peaks_are_exact_and_bubbles_beat_one_f_one_b(p: int, times: int) -> None:
    """Issue 3: m = 2p and 4p; peak exactly floor((p+4)/3)/p and floor((p+2)/2)/p of 1F1B's;
    bubble (paper metric, unit costs) below 1F1B's at the same p and m."""
    m = times * p
    for name, peak in (("v-min", v_min_peak(p)), ("v-half", v_half_peak(p))):
        schedule = generate(name, p, m)
        validate(schedule)
        sim = simulate(schedule)
        assert sim.peak_fraction == pytest.approx(peak, abs=1e-12), name
        # In stage-activations: twice the 1F1B fraction's numerator, since S = 2p.
        assert max(sim.peak_memory) == 2 * round(peak * p)
        assert sim.bubble_rate < one_f_one_b_bubble(p, m), name


def test_v_half_bubble_is_about_half_and_v_min_about_two_thirds_of_one_f_one_b() -> None:
    """design.md, "Closed forms": V-Half's bubble is about half of 1F1B's, V-Min's about 2/3."""
    for p in (4, 8, 16):
        m = 4 * p
        ref = one_f_one_b_bubble(p, m)
        half = simulate(generate("v-half", p, m)).bubble_rate / ref
        two_thirds = simulate(generate("v-min", p, m)).bubble_rate / ref
        assert 0.25 < half < 0.65
        assert 0.5 < two_thirds < 0.8
        assert half < two_thirds


@pytest.mark.parametrize("p", range(2, 17))
def test_v_zb_is_zero_bubble_at_one_f_one_b_memory(p: int) -> None:
    """Issue 3: V-ZB has zero bubble (paper metric) at a peak no higher than 1F1B's, m >= 2p."""
    for m in sorted({2 * p, 2 * p + 1, 3 * p + 2}):
        schedule = generate("v-zb", p, m)
        validate(schedule)
        sim = simulate(schedule)
        assert sim.bubble_rate == 0, (p, m)
        assert sim.peak_fraction <= 1 + 1e-12
        assert max(sim.peak_memory) == 2 * p  # it does use all of 1F1B's memory


@given(st.integers(1, 16), st.data())
def test_every_generated_schedule_validates(p: int, data: st.DataObject) -> None:
    """For p in 1..16 and m in 1..8p every V schedule is valid and within its peak; V-ZB is
    zero-bubble from m = 2p on."""
    m = data.draw(st.integers(1, 8 * p), label="m")
    name = data.draw(st.sampled_from(NAMES), label="name")
    schedule = generate(name, p, m)
    validate(schedule)
    assert schedule.name == name
    sim = simulate(schedule)
    limit = {"v-min": v_min_peak(p), "v-half": v_half_peak(p), "v-zb": 1.0}[name]
    assert sim.peak_fraction <= limit + 1e-12
    if name == "v-zb" and m >= 2 * p:
        assert sim.bubble_rate == 0
    if m >= 2 * p and name != "v-zb":
        assert sim.peak_fraction == pytest.approx(limit, abs=1e-12)


def test_blocks_never_collide_and_their_stable_peaks_are_the_closed_forms() -> None:
    """The blocks repeat cleanly for p = 1..64 and their stable phases hold exactly
    2*floor((p+4)/3), 2*floor((p+2)/2) and 2p chunk-activations at most."""
    for p in range(1, 65):
        for make, want in ((v_min_block, v_min_peak(p)), (v_half_block, v_half_peak(p)),
                           (v_zb_block, 1.0)):
            block = make(p)
            assert find_collision(block) is None, (make.__name__, p)
            assert max(stable_peak(block)) == 2 * round(want * p), (make.__name__, p)


def section_6_and_7_slots(name: str, p: int, i: int) -> tuple[int, int, int, int]:
    """Slots of F(chunk 0), F(chunk 1), B(chunk 1), B(chunk 0) on rank i, as docs/design.md says."""
    if name == "v-min":
        x = 2 if p % 3 == 0 else 0
        return (i, 2 * p - 1 - i, 2 * p + x + i, 4 * p + x - 1 - i)
    if name == "v-half":
        x = 3 if p % 2 == 0 else 0
        return (2 * i, 3 * p - 2 - i, 3 * p + x - 1 + 2 * i, 6 * p + x - 2 - i)
    return (4 * i, 6 * p - 3 - 2 * i, 6 * p - 2 + 4 * i, 12 * p - 5 - 2 * i)


def test_slot_formulas_of_the_blocks() -> None:
    """The blocks hold the slots of docs/design.md, "Generation rules" (V-Min, V-Half) and the
    (4, 2) offsets of "Lifespan and the peak bound": chunk-0 F's delta0 apart from rank to
    rank, chunk-1 F's delta1."""
    makers = {"v-min": v_min_block, "v-half": v_half_block, "v-zb": v_zb_block}
    deltas = {"v-min": (1, 1), "v-half": (2, 1), "v-zb": (4, 2)}
    for p in (3, 4, 5, 6):
        for name, make in makers.items():
            block = make(p)
            assert block.period == 6 and block.placement is Placement.V
            slots = []
            for i in range(p):
                s0, s1 = i, 2 * p - 1 - i
                got = []
                for stage, kind in ((s0, Pass.F), (s1, Pass.F), (s1, Pass.B), (s0, Pass.B)):
                    bp = block.get(stage, kind)
                    assert bp is not None
                    got.append(bp.offset)
                assert tuple(got) == section_6_and_7_slots(name, p, i)
                slots.append(got)
            d0, d1 = deltas[name]
            assert all(b[0] - a[0] == d0 for a, b in zip(slots, slots[1:], strict=False))
            assert all(a[1] - b[1] == d1 for a, b in zip(slots, slots[1:], strict=False))
            assert fill_w(block).is_closed


def test_registry_entries() -> None:
    """Registered with the V placement, two stages per rank (fixed) and the CM paper cited."""
    for name in NAMES:
        gen = get(name)
        assert gen.placement is Placement.V
        assert gen.stages_per_rank == 2 and gen.fixed_stages_per_rank
        assert "2405.15362" in gen.source
    with pytest.raises(SpecError, match="stages_per_rank == 2"):
        generate("v-half", 4, 8, 3)


def test_large_pipeline_is_valid() -> None:
    """p=64, m=512 builds a valid schedule (its speed is the benchmark's business)."""
    schedule = generate("v-zb", 64, 512)
    validate(schedule)
    assert schedule.num_actions == 64 * 6 * 512
