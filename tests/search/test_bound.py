"""The V search against the CM paper's lower bound on bubbles under a memory limit.

Setting (issue 5): unit costs (F = B = W), no transfer cost, V placement, m = 4p. A *slot* is
one chunk pass: half of UniformCosts' per-rank unit, since a rank with v = 2 stages runs each
pass in 1/2. A budget of k chunk-activations is the fraction k/(2p) of 1F1B's peak.

The idle measure is the papers' bubble (docs/design.md, "Metrics"): the pipeline costs the
longest span of any rank (first start to last end), and rank r idles that cost minus its busy
time. In slots: idle_r = 2 * (max(span) - busy_r). The bound is stated in this metric, so the
search is asked to rank by it (``objective="bubble"``); the default ranks by makespan, which at
some odd k prefers a schedule one slot above the bound but shorter overall (checked below).

Bound: idle_r <= max(0, 6p - 1 - 3k). The search meets it exactly at every k from the smallest
feasible budget to 2p except k = 2p - 1, where no schedule does: the least idle is 3, not 2
(:func:`least_rank0_idle`, an exhaustive search over every schedule, shows it for p = 2 and 3;
the paper's own code expects 3 there too), and the search gets 3.
"""

from __future__ import annotations

import itertools

import pytest

from pipeblocks.search import Searcher
from pipeblocks.sim import UNIT


def idle_slots(sim) -> list[float]:  # type: ignore[no-untyped-def]
    """Per rank: longest span minus the rank's busy time, in slots (one slot = 1/2 unit)."""
    cost = max(sim.span)
    return [2 * (cost - b) for b in sim.busy]


def bound(p: int, k: int) -> int:
    return max(0, 6 * p - 1 - 3 * k)


def sweep(p: int, objective: str = "bubble") -> dict[int, tuple[float, float, float]]:
    """k -> (peak in chunk-activations, max idle in slots, makespan) of the search, m = 4p."""
    searcher = Searcher(p, 4 * p, UNIT, "v", named=False, objective=objective)
    smallest = round(searcher.smallest() * 2 * p)
    out = {}
    for k in range(smallest, 2 * p + 1):
        r = searcher.best(k / (2 * p))
        out[k] = (max(r.peak_memory), max(idle_slots(r.simulation)), r.makespan)
    return out


def check(p: int) -> None:
    results = sweep(p)
    assert min(results) <= p  # the sweep starts near V-Min's memory (about 2p/3)
    assert max(results) == 2 * p
    for k, (peak, idle, _) in results.items():
        assert peak <= k, (p, k)
        if k == 2 * p - 1:
            assert idle == bound(p, k) + 1 == 3, (p, k, idle)  # the optimum (module docs)
        else:
            assert idle <= bound(p, k), (p, k, idle)


def test_bound_p8() -> None:
    """p = 8, m = 32: for every budget k from V-Min's memory (8) to 16 the peak is at most k
    and the idle meets the paper's bound exactly, except k = 15 = 2p - 1: 3, the optimum."""
    check(8)


@pytest.mark.slow
def test_bound_p16() -> None:
    """p = 16, m = 64: the same for every k from 12 to 32 (k = 31: 3, the optimum)."""
    check(16)


def test_makespan_objective_trades_a_slot_of_bubble_for_a_shorter_step() -> None:
    """The default objective (makespan) is never slower than the bubble one and never more
    than one slot above the bound; at p = 8, k = 13 the two really disagree: 9 slots and
    makespan 101 against 8 slots and 102.5."""
    p = 8
    bubble, fast = sweep(p, "bubble"), sweep(p, "makespan")
    assert bubble.keys() == fast.keys()
    for k in bubble:
        assert fast[k][0] <= k
        assert fast[k][2] <= bubble[k][2], k
        assert bubble[k][1] <= fast[k][1] <= bound(p, k) + 1, k
    assert (fast[13][1:], bubble[13][1:]) == ((9.0, 101.0), (8.0, 102.5))


def least_rank0_idle(p: int, m: int, k: int) -> int:
    """The least idle of rank 0 over *every* schedule (exhaustive, breadth-first over time).

    Unit passes, no transfer cost, V placement, F allocates and W frees one chunk-activation,
    at most k per rank. A state counts the F's, B's and W's run per stage (microbatches go
    through a stage in order, which loses nothing: they are identical). At each step every
    rank runs one available pass or idles; idling while a B or W is available never helps (the
    pass could run now and leave the later slot idle instead), so it is not tried. Returns the
    first time rank 0 can have run all its passes, minus its 6m slots of work. Rank 0 starts
    the pipeline, so this is its span's idle.
    """
    n = 2 * p
    rank_of = [s if s < p else n - 1 - s for s in range(n)]
    stages = [[s for s in range(n) if rank_of[s] == r] for r in range(p)]
    mine = [3 * s + x for s in (0, n - 1) for x in range(3)]
    layer = {tuple([0] * (3 * n))}
    t = 0
    while not any(all(st[i] == m for i in mine) for st in layer):
        nxt = set()
        for st in layer:
            options = []
            for r in range(p):
                held = sum(st[3 * s] - st[3 * s + 2] for s in stages[r])
                f_ok, other = [], []
                for s in stages[r]:
                    f, b, w = st[3 * s:3 * s + 3]
                    if f < m and (s == 0 or st[3 * (s - 1)] > f) and held < k:
                        f_ok.append(3 * s)
                    if b < f and (s == n - 1 or st[3 * (s + 1) + 1] > b):
                        other.append(3 * s + 1)
                    if w < b:
                        other.append(3 * s + 2)
                options.append(f_ok + other if other else [*f_ok, None])
            for choice in itertools.product(*options):
                new = list(st)
                for c in choice:
                    if c is not None:
                        new[c] += 1
                nxt.add(tuple(new))
        layer, t = nxt, t + 1
    return t - 6 * m


def test_exhaustive_reference_matches_known_points() -> None:
    """The exhaustive search agrees with the bound where the bound is tight: p = 2, k = 4
    gives 0 (V-ZB's zero bubble), p = 3, k = 4 gives 5 = 6p - 1 - 3k."""
    assert least_rank0_idle(2, 4, 4) == 0
    assert least_rank0_idle(3, 4, 4) == bound(3, 4)


def test_bound_is_unreachable_at_2p_minus_1_for_p2() -> None:
    """p = 2, k = 3 = 2p - 1: every schedule idles at least 3 slots, one above the bound's 2."""
    assert least_rank0_idle(2, 4, 3) == 3 == bound(2, 3) + 1


@pytest.mark.slow
def test_bound_is_unreachable_at_2p_minus_1_for_p3() -> None:
    """p = 3, k = 5: the least idle is 3 again (the bound says 2), and the search reaches it."""
    assert least_rank0_idle(3, 4, 5) == 3 == bound(3, 5) + 1
    r = Searcher(3, 12, UNIT, "v", named=False, objective="bubble").best(5 / 6)
    assert max(idle_slots(r.simulation)) == 3
