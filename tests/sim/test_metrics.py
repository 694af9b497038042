"""The bubble map, memory look-ups and the JSON summary."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate, names
from pipeblocks.sim import BubbleKind, UniformCosts, bubble_map, memory_at, simulate, summary


def test_bubble_map_1f1b_by_hand() -> None:
    """1F1B p=2 m=2 unit costs: rank 0 idles 2-4 holding 2 and 6-7 holding 1; rank 1 waits
    0-1 and 7-9 holding nothing."""
    sim = simulate(generate("1f1b", 2, 2))
    rank0, rank1 = bubble_map(sim)
    assert [(b.kind, b.start, b.end, b.held, b.free) for b in rank0] == [
        (BubbleKind.INNER, 2, 4, 2, 0), (BubbleKind.INNER, 6, 7, 1, 1)]
    assert [(b.kind, b.start, b.end, b.held, b.free) for b in rank1] == [
        (BubbleKind.LEAD, 0, 1, 0, 2), (BubbleKind.TAIL, 7, 9, 0, 2)]


def test_bubble_map_capacity() -> None:
    """free = capacity - held for a given capacity."""
    sim = simulate(generate("1f1b", 2, 2))
    assert [b.free for b in bubble_map(sim, capacity=5)[0]] == [3, 4]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(names())), st.integers(2, 6), st.integers(1, 12),
       st.sampled_from([0.0, 0.3, 1.0]), st.sampled_from([0.5, 1.0, 2.0]))
def test_bubbles_and_busy_fill_the_makespan(name: str, p: int, m: int, comm: float,
                                            b: float) -> None:
    """Per rank, busy time plus the bubbles' lengths is the makespan; held matches memory_at."""
    try:
        sched = generate(name, p, m)
    except SpecError:
        return
    sim = simulate(sched, UniformCosts(f=1, b=b, w=0.5, comm=comm))
    for r, bubbles in enumerate(bubble_map(sim)):
        assert sim.busy[r] + sum(x.length for x in bubbles) == pytest.approx(sim.makespan)
        for x in bubbles:
            assert x.length > 0
            assert x.held == pytest.approx(memory_at(sim, r, (x.start + x.end) / 2))
            assert x.free == pytest.approx(max(sim.peak_memory) - x.held)


def test_memory_at() -> None:
    """memory_at reads the step function: 1F1B p=2 m=2 rank 0 holds 2 from t=1 to t=6."""
    sim = simulate(generate("1f1b", 2, 2))
    assert [memory_at(sim, 0, t) for t in (0, 0.5, 1, 3, 6, 8, 9)] == [1, 1, 2, 2, 1, 1, 0]


def test_summary_has_the_fields_the_cli_promises() -> None:
    """summary() holds makespan, both bubble rates, per-rank peaks and busy, and P2P volume."""
    out = summary(simulate(generate("1f1b", 4, 8)))
    assert out["makespan"] == 33 and out["bubble_rate"] == out["bubble_rate_global"] == 3 / 11
    assert out["peak_memory"] == [4, 3, 2, 1] and out["busy"] == [24] * 4
    assert out["peak_fraction"] == 1.0 and out["p2p_transfers"] == 2 * 3 * 8
