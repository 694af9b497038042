"""The simulator meets docs/design.md's "Closed forms" exactly, unequal times too."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeblocks.generators import generate, names
from pipeblocks.sim import Simulation, UniformCosts, simulate
from pipeblocks.sim.formulas import bubble_formula, bubble_rate_formula

TIMES = st.sampled_from([0.25, 0.5, 1.0, 1.5, 2.0, 3.0])


def per_rank_bubble(sim: Simulation) -> float:
    """The papers' bubble time: max span minus the (equal) busy time of a rank."""
    return max(sim.span) - sum(sim.busy) / len(sim.busy)


def need(name: str) -> None:
    if name not in names():
        pytest.skip(f"generator {name!r} is not registered yet")


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(["gpipe", "1f1b"]), st.integers(2, 9), st.integers(1, 30), TIMES, TIMES,
       TIMES)
def test_gpipe_and_1f1b(name: str, p: int, m: int, f: float, b: float, w: float) -> None:
    """GPipe and 1F1B leave (p-1)(F+B+W) per rank, for any m and any F, B, W."""
    sim = simulate(generate(name, p, m), UniformCosts(f=f, b=b, w=w))
    assert per_rank_bubble(sim) == pytest.approx((p - 1) * (f + b + w), abs=1e-9)


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 9), st.integers(0, 20), TIMES, TIMES, TIMES)
def test_zb_h1(p: int, extra: int, f: float, b: float, w: float) -> None:
    """ZB-H1 leaves (p-1)(F+B-W) when m >= p and W <= F."""
    need("zb-h1")
    w = min(w, f)
    sim = simulate(generate("zb-h1", p, p + extra), UniformCosts(f=f, b=b, w=w))
    assert per_rank_bubble(sim) == pytest.approx((p - 1) * (f + b - w), abs=1e-9)


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 9), st.integers(0, 20), TIMES, TIMES, TIMES)
def test_zb_h2(p: int, extra: int, f: float, b: float, w: float) -> None:
    """ZB-H2 leaves (p-1)(F+B-2W) when that is >= 0, W <= F and m >= 2p-1."""
    need("zb-h2")
    w = min(w, f, (f + b) / 2)
    sim = simulate(generate("zb-h2", p, 2 * p - 1 + extra), UniformCosts(f=f, b=b, w=w))
    assert per_rank_bubble(sim) == pytest.approx((p - 1) * (f + b - 2 * w), abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6), st.integers(2, 4), st.integers(1, 4), TIMES, TIMES, TIMES)
def test_interleaved(p: int, v: int, groups: int, f: float, b: float, w: float) -> None:
    """Interleaved 1F1B with v chunks leaves (p-1)(F+B+W)/v (m a multiple of p)."""
    need("interleaved-1f1b")
    sim = simulate(generate("interleaved-1f1b", p, p * groups, v), UniformCosts(f=f, b=b, w=w))
    assert per_rank_bubble(sim) == pytest.approx((p - 1) * (f + b + w) / v, abs=1e-9)


@pytest.mark.parametrize("p", [2, 3, 4, 8])
@pytest.mark.parametrize("m", [1, 5, 16])
def test_unit_rates_match_the_table(p: int, m: int) -> None:
    """Unit costs: 1F1B and GPipe (p-1)/(m+p-1), ZB-H1 (p-1)/(3m+p-1) (m >= p), as design.md has."""
    for name, rate in (("1f1b", (p - 1) / (m + p - 1)), ("gpipe", (p - 1) / (m + p - 1)),
                       ("zb-h1", (p - 1) / (3 * m + p - 1))):
        if name == "zb-h1" and m < p:
            continue
        sim = simulate(generate(name, p, m))
        assert sim.bubble_rate == pytest.approx(rate)
        assert bubble_rate_formula(name, sim.schedule.spec, f=1, b=1, w=1) == pytest.approx(rate)


def test_formula_domains() -> None:
    """bubble_formula gives None outside the domain where the form is exact."""
    from pipeblocks.ir import PipelineSpec

    assert bubble_formula("zb-h1", PipelineSpec(4, 3), f=1, b=1, w=1) is None  # m < p
    assert bubble_formula("zb-h1", PipelineSpec(4, 8), f=1, b=1, w=2) is None  # W > F
    assert bubble_formula("zb-h2", PipelineSpec(4, 6), f=1, b=1, w=1) is None  # m < 2p-1
    assert bubble_formula("zb-h2", PipelineSpec(4, 7), f=2, b=1, w=2) is None  # F+B < 2W
    assert bubble_formula("v-half", PipelineSpec(4, 8, 2, "v"), f=1, b=1, w=1) is None
    assert bubble_formula("zb-v", PipelineSpec(4, 6, 2, "v"), f=1, b=1, w=1) is None  # m < 2p-1
    assert bubble_formula("zb-v", PipelineSpec(4, 8, 2, "v"), f=1, b=2, w=1) is None


@pytest.mark.parametrize("p", [2, 3, 4, 6, 8])
def test_peaks_of_the_handcrafted_schedules(p: int) -> None:
    """Unit memory: GPipe m/p, 1F1B and ZB-H1 1, ZB-H2 (2p-1)/p of 1F1B's peak (m = 3p)."""
    m = 3 * p
    assert simulate(generate("gpipe", p, m)).peak_fraction == pytest.approx(m / p)
    assert simulate(generate("1f1b", p, m)).peak_fraction == 1.0
    assert simulate(generate("1f1b", p, m)).peak_memory == tuple(float(p - r) for r in range(p))
    assert simulate(generate("zb-h1", p, m)).peak_fraction == 1.0
    assert simulate(generate("zb-h2", p, m)).peak_fraction == pytest.approx((2 * p - 1) / p)


@pytest.mark.parametrize("p", [2, 3, 4, 5, 6, 8])
def test_interleaved_peak(p: int) -> None:
    """Interleaved 1F1B with v chunks peaks at 1 + (p-1)/(p v) of 1F1B's (m = 2p)."""
    need("interleaved-1f1b")
    for v in (2, 3):
        sim = simulate(generate("interleaved-1f1b", p, 2 * p, v))
        assert sim.peak_fraction == pytest.approx(1 + (p - 1) / (p * v))


@pytest.mark.parametrize("p", [2, 3, 4, 5, 6, 8])
def test_zero_bubble_v_schedules(p: int) -> None:
    """ZB-V and V-ZB have no bubble with F = B = W once m >= 2p-1, at 1F1B's peak."""
    for name in ("zb-v", "v-zb"):
        need(name)
        for m, t in ((2 * p - 1, 1.0), (2 * p, 2.5), (3 * p + 1, 0.5)):
            sim = simulate(generate(name, p, m), UniformCosts(f=t, b=t, w=t))
            assert sim.bubble_rate == 0.0, (name, m)
            assert bubble_formula(name, sim.schedule.spec, f=t, b=t, w=t) == 0.0
            assert simulate(generate(name, p, m)).peak_fraction == pytest.approx(1.0), name


@pytest.mark.parametrize("p", [2, 3, 4, 5, 6, 8, 9, 12])
def test_v_half_and_v_min_peaks(p: int) -> None:
    """V-Half peaks at floor((p+2)/2)/p and V-Min at floor((p+4)/3)/p of 1F1B's (unit memory)."""
    ran = False
    for name, peak in (("v-half", (p + 2) // 2 / p), ("v-min", (p + 4) // 3 / p)):
        if name not in names():
            continue
        ran = True
        sim = simulate(generate(name, p, 4 * p))
        assert sim.peak_fraction == pytest.approx(peak), name
    if not ran:
        pytest.skip("v-half and v-min are not registered yet")
