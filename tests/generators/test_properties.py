"""Property tests (issue 3) over every registered generator: valid, simulated, closed forms.

Unit costs (T_F = T_B = T_W = 1 per rank, a stage's pass 1/v of it, no transfer cost) and unit
memory (mem_f = mem_w = 1 stage-activation) unless a test says otherwise. "Bubble time" is the
papers' metric (docs/design.md, "Metrics"): max over ranks of (last end - first start) minus the
busy time of a rank, which is the same on every rank (m·(T_F+T_B+T_W)).

Conditions the closed forms of docs/design.md, "Closed forms" need (found by reasoning, then checked
here on every draw):

- Peaks: a rank cannot hold more activations than it has microbatches, so 1F1B's and ZB-H1's
  peak is min(m, p) (rank r of 1F1B holds min(p-r, m)), ZB-H2's min(m, 2p-1) and ZB-V's
  2·min(m, p) chunk-activations; the table's values are the case m >= p (m >= 2p-1 for ZB-H2).
  Interleaved 1F1B holds warm-up + 1 = 2(p-1-r) + (v-1)p + 1 chunk-activations on rank r,
  capped at its m·v: the table's 1 + (p-1)/(p·v) needs m >= 2p (m % p == 0 and m > p).
- Bubbles: with few microbatches rank 0 runs out of F's before its first B returns. ZB-H1 and
  ZB-H2 then idle 2p-1-m units (B(0) reaches rank 0 at time 2p-1, after which it has 2m units
  of B and W), and so, measured, does ZB-V: the table's values need m >= p (ZB-H1) and
  m >= 2p-1 (ZB-H2, ZB-V, which are zero-bubble from there on). 1F1B, GPipe and interleaved
  1F1B meet theirs for every legal m; looped BFS (not in the table: GPipe over p·v chunks,
  rate (p-1)/(v·m+p-1)) once m >= p.
- 1F1B-V and DualPipeV are not in the table; they are held to the figures their generators'
  docstrings state (pipeblocks.generators.fused_v and .dualpipe).
- Unequal times: ZB-H1's (p-1)(F+B-W) and ZB-H2's (p-1)(F+B-2W) also need T_W <= T_F. Rank 0
  cannot start B(0) before the forward has crossed p ranks and the B has come back over p-1:
  it idles at least (p-1)·T_B (ZB-H1) or (p-1)(T_B - T_F) (ZB-H2) before it, more than the
  formula allows once T_W > T_F.
- Paper metric vs global: 1F1B idles (p-1)(F+B+W) in both views, on every rank. For ZB-H1/H2
  makespan - busy is max(paper form, (p-1)·T_F) on every rank: rank p-1 cannot start before
  the first F has crossed p-1 ranks, and then has a full rank's work to do. The zero-bubble
  rows of the table are in the paper metric (docs/design.md, "Closed forms" says so).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate, get, names
from pipeblocks.ir import Pass, validate
from pipeblocks.ir.schedule import Schedule
from pipeblocks.sim import Simulation, UniformCosts, simulate

TOL = 1e-9


# --- the documented constraints ------------------------------------------------------------


def legal(name: str, p: int, m: int, v: int) -> bool:
    """Whether ``name`` accepts (p, m, v), by the constraint its docstring documents."""
    gen = get(name)
    if gen.fixed_stages_per_rank and v != gen.stages_per_rank:
        return False
    if name == "interleaved-1f1b":
        return v >= 2 and m % p == 0
    if name == "dualpipe-v":
        return m >= 2 * p
    return True


def smallest_m(name: str, p: int) -> int:
    """The smallest m that ``name`` accepts at p ranks."""
    return {"interleaved-1f1b": p, "dualpipe-v": 2 * p}.get(name, 1)


@st.composite
def sizes(draw: st.DrawFn, name: str, max_p: int = 16) -> tuple[int, int, int]:
    """(p, m, v): p in 2..max_p, m from the smallest legal value to 8p, v where allowed.

    Half of the draws snap m to a multiple of p, so divisibility rules get legal draws too.
    """
    gen = get(name)
    p = draw(st.integers(2, max_p))
    m = draw(st.integers(smallest_m(name, p), 8 * p))
    if draw(st.booleans()):
        m = max(p, m - m % p)
    v = gen.stages_per_rank if gen.fixed_stages_per_rank else draw(st.integers(1, 3))
    return p, m, v


def make(name: str, p: int, m: int, v: int) -> Schedule | None:
    """The schedule, or None after checking that the SpecError is the documented one."""
    if not legal(name, p, m, v):
        with pytest.raises(SpecError, match=re.escape(name)):
            generate(name, p, m, v)
        return None
    return generate(name, p, m, v)


def bubble_time(sim: Simulation) -> float:
    """The papers' bubble time: max span minus the busy time of a rank."""
    return max(sim.span) - sum(sim.busy) / len(sim.busy)


# --- the expected figures, per generator ---------------------------------------------------
# Each returns (bubble time, peaks) under unit costs: peaks per rank (a tuple) or the largest
# (a number), in stage-activations; None where the generator has no closed form for the case.

Expected = tuple[float | None, tuple[float, ...] | float | None]


def _one_f_one_b(p: int, m: int, v: int) -> Expected:
    return 3 * (p - 1), tuple(min(p - r, m) for r in range(p))


def _gpipe(p: int, m: int, v: int) -> Expected:
    return 3 * (p - 1), (m,) * p


def _interleaved(p: int, m: int, v: int) -> Expected:
    # rate (p-1)/(v·m + p-1) with busy 3m: bubble time 3(p-1)/v
    peaks = tuple(min(2 * (p - 1 - r) + (v - 1) * p + 1, m * v) for r in range(p))
    return 3 * (p - 1) / v, peaks


def _looped_bfs(p: int, m: int, v: int) -> Expected:
    # GPipe over the p·v chunks: rate (p-1)/(v·m + p-1) once rank 0's m F's of one local stage
    # outlast the trip of the first microbatch around the other p-1 ranks (m >= p)
    return (3 * (p - 1) / v if m >= p else None), (m * v,) * p


def _zb_h1(p: int, m: int, v: int) -> Expected:
    return max(p - 1, 2 * p - 1 - m), (min(m, p),) * p


def _zb_h2(p: int, m: int, v: int) -> Expected:
    return max(0, 2 * p - 1 - m), (min(m, 2 * p - 1),) * p


def _zb_v(p: int, m: int, v: int) -> Expected:
    return max(0, 2 * p - 1 - m), 2 * min(m, p)  # rank p-1 holds the most


def _fused_v(p: int, m: int, v: int) -> Expected:
    # the generator's documented figures (pipeblocks.generators.fused_v)
    return 3 * (p - 1) + min((p - 1) % 3, m - 1) / 2, min(2 * m, 2 * math.ceil((2 * p + 1) / 3))


def _dualpipe_v(p: int, m: int, v: int) -> Expected:
    # the generator's documented figures (pipeblocks.generators.dualpipe): 2p+1 chunk-activations
    return (p - 1) / 2, (2 * p + 1,) * p


def _table(name: str, p: int, m: int, v: int) -> tuple[float | None, float | None]:
    """docs/design.md, "Closed forms" as written: (bubble rate, peak fraction of 1F1B's), None
    where the condition a value needs (module docstring) does not hold."""
    rate: float | None = None
    peak: float | None = None
    if name in ("1f1b", "gpipe"):
        rate = (p - 1) / (m + p - 1)
        peak = m / p if name == "gpipe" else (1 if m >= p else None)
    elif name == "interleaved-1f1b":
        rate = (p - 1) / (v * m + p - 1)
        peak = 1 + (p - 1) / (p * v) if m >= 2 * p else None
    elif name == "zb-h1" and m >= p:
        rate, peak = (p - 1) / (3 * m + p - 1), 1
    elif name == "zb-h2" and m >= 2 * p - 1:
        rate, peak = 0, (2 * p - 1) / p
    elif name == "zb-v" and m >= 2 * p - 1:
        rate, peak = 0, 1
    return rate, peak


CLOSED: dict[str, Callable[[int, int, int], Expected]] = {
    "1f1b": _one_f_one_b,
    "gpipe": _gpipe,
    "interleaved-1f1b": _interleaved,
    "looped-bfs": _looped_bfs,
    "zb-h1": _zb_h1,
    "zb-h2": _zb_h2,
    "zb-v": _zb_v,
    "1f1b-v": _fused_v,
    "dualpipe-v": _dualpipe_v,
}


# --- every generator -----------------------------------------------------------------------


@pytest.mark.parametrize("name", names())
@given(data=st.data())
def test_every_generator_validates_simulates_and_meets_its_figures(
    name: str, data: st.DataObject
) -> None:
    """Each generator's schedule validates, simulates fully busy, meets its closed forms.

    ZB-V and V-ZB, in particular, have zero bubble at a peak <= 1F1B's when m >= 2p.
    """
    p, m, v = data.draw(sizes(name), label="p, m, v")
    schedule = make(name, p, m, v)
    if schedule is None:
        return
    assert schedule.spec.num_stages == p * v
    validate(schedule)
    sim = simulate(schedule)
    for busy in sim.busy:  # every pass ran: m·(F+B+W) per rank
        assert busy == pytest.approx(3 * m, abs=TOL)
    assert 0 <= sim.bubble_rate < 1
    bubble, peaks = CLOSED[name](p, m, v) if name in CLOSED else (None, None)
    if bubble is not None:
        assert bubble_time(sim) == pytest.approx(bubble, abs=TOL)
        assert sim.bubble_rate == pytest.approx(bubble / (3 * m + bubble), abs=TOL)
    if isinstance(peaks, tuple):
        assert sim.peak_memory == pytest.approx(peaks, abs=TOL)
    elif peaks is not None:
        assert max(sim.peak_memory) == pytest.approx(peaks, abs=TOL)
    rate, peak = _table(name, p, m, v)
    if rate is not None:
        assert sim.bubble_rate == pytest.approx(rate, abs=TOL)
    if peak is not None:
        assert sim.peak_fraction == pytest.approx(peak, abs=TOL)
    if name in ("zb-v", "v-zb") and m >= 2 * p:  # zero bubble at no more than 1F1B's memory
        assert sim.bubble_rate == pytest.approx(0, abs=TOL)
        assert sim.peak_fraction <= 1 + TOL


@pytest.mark.parametrize("name", names())
def test_every_generator_on_one_rank(name: str) -> None:
    """p = 1 (every stage on one rank) gives a valid schedule that runs all of its passes."""
    for m in range(smallest_m(name, 1), smallest_m(name, 1) + 4):
        schedule = generate(name, 1, m)
        validate(schedule)
        assert simulate(schedule).busy == pytest.approx((3 * m,), abs=TOL)


# --- the V-shaped rows of docs/design.md, "Closed forms" ----------------------------------------


@pytest.mark.parametrize(
    ("name", "peak"),
    [("v-half", lambda p: (p + 2) // 2 / p), ("v-min", lambda p: (p + 4) // 3 / p)],
)
@pytest.mark.parametrize("p", [4, 6, 8, 16])
def test_v_half_and_v_min_table(name: str, peak: Callable[[int], float], p: int) -> None:
    """V-Half and V-Min: peak exactly floor((p+2)/2)/p, floor((p+4)/3)/p; bubble below 1F1B's."""
    if name not in names():
        pytest.skip(f"{name} is not registered yet")
    for m in (2 * p, 4 * p):
        sim = simulate(generate(name, p, m))
        assert sim.peak_fraction == pytest.approx(peak(p), abs=TOL)
        assert sim.bubble_rate < simulate(generate("1f1b", p, m)).bubble_rate


# --- unequal times ---------------------------------------------------------------------------

TIMES = st.integers(1, 16).map(lambda k: k / 4)  # exact in binary: no rounding in the sums


@given(st.integers(2, 12), st.data(), TIMES, TIMES, TIMES)
def test_1f1b_unequal_times(p: int, data: st.DataObject, f: float, b: float, w: float) -> None:
    """1F1B idles (p-1)(F+B+W) per rank, paper metric and global, for any m, F, B, W."""
    m = data.draw(st.integers(1, 8 * p))
    sim = simulate(generate("1f1b", p, m), UniformCosts(f, b, w))
    assert bubble_time(sim) == pytest.approx((p - 1) * (f + b + w), abs=TOL)
    for idle in sim.idle:
        assert idle == pytest.approx((p - 1) * (f + b + w), abs=TOL)


@given(st.integers(2, 12), st.data(), TIMES, TIMES, TIMES)
def test_zb_unequal_times(p: int, data: st.DataObject, f: float, b: float, w: float) -> None:
    """ZB-H1 idles (p-1)(F+B-W) (m >= p), ZB-H2 max(0, (p-1)(F+B-2W)) (m >= 2p-1), if W <= F.

    Globally (makespan - busy) every rank idles the larger of that and (p-1)·T_F.
    """
    assume(w <= f)
    m = data.draw(st.integers(p, 8 * p))
    costs = UniformCosts(f, b, w)
    forms = [("zb-h1", (p - 1) * (f + b - w))]
    if m >= 2 * p - 1:
        forms.append(("zb-h2", max(0.0, (p - 1) * (f + b - 2 * w))))
    for name, paper in forms:
        sim = simulate(generate(name, p, m), costs)
        assert bubble_time(sim) == pytest.approx(paper, abs=TOL)
        for idle in sim.idle:  # global view: rank p-1 cannot start before (p-1)·T_F
            assert idle == pytest.approx(max(paper, (p - 1) * f), abs=TOL)


@given(st.integers(2, 8), st.integers(2, 4), TIMES, TIMES, TIMES)
def test_zb_formulas_need_w_at_most_f(p: int, m_over_p: int, f: float, b: float, w: float) -> None:
    """When T_W > T_F, rank 0's wait for its first B exceeds the ZB formulas (the condition)."""
    assume(w > f)
    m = m_over_p * p
    costs = UniformCosts(f, b, w)
    h1 = simulate(generate("zb-h1", p, m), costs)
    assert bubble_time(h1) >= (p - 1) * b - TOL  # rank 0's wait for B(0)
    assert bubble_time(h1) > (p - 1) * (f + b - w) + TOL  # so the formula undercounts
    h2 = simulate(generate("zb-h2", p, m), costs)
    assert bubble_time(h2) >= (p - 1) * (b - f) - TOL


# --- the split/fused convention --------------------------------------------------------------


KINDS = {
    **dict.fromkeys(["gpipe", "1f1b", "interleaved-1f1b", "looped-bfs", "1f1b-v"], "fused"),
    **dict.fromkeys(["zb-h1", "zb-h2", "zb-v", "v-min", "v-half", "v-zb"], "split"),
    "dualpipe-v": "both",
}


@pytest.mark.parametrize("name", sorted(set(KINDS) & set(names())))
def test_passes_are_split_or_fused_as_documented(name: str) -> None:
    """Split-B/W generators emit B and W only; fused ones BW only; DualPipeV both, as it does."""
    p = 4
    m = max(smallest_m(name, p), 2 * p)
    kinds = {a.kind for _, _, a in generate(name, p, m).actions()}
    expected = {
        "fused": {Pass.F, Pass.BW},
        "split": {Pass.F, Pass.B, Pass.W},
        "both": {Pass.F, Pass.B, Pass.W, Pass.BW},
    }[KINDS[name]]
    assert kinds == expected
