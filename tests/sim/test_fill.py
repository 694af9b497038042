"""Fill placement in the simulator: tasks go in the gaps, no pass moves, misfits are named."""

from __future__ import annotations

import pytest

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate
from pipeblocks.sim import UniformCosts, simulate
from pipeblocks.sim.fill import FillTask, parse_fill, place_fill
from pipeblocks.sim.metrics import bubble_map


def _overlaps(a0: float, a1: float, b0: float, b1: float) -> bool:
    return a0 < b1 - 1e-12 and b0 < a1 - 1e-12


@pytest.mark.parametrize("name", ["1f1b", "v-min", "zb-h1"])
def test_fill_lies_in_gaps_and_never_overlaps_a_pass(name: str) -> None:
    """Every fill span is inside the rank's idle time, spans do not overlap each other."""
    sim = simulate(generate(name, 4, 8), UniformCosts(f=1, b=1, w=1))
    plan = place_fill(sim, [FillTask(0.3)] * 200)
    assert plan.tasks_done > 0
    for rank, spans in enumerate(plan.spans):
        for f in spans:
            assert f.end - f.start == pytest.approx(0.3)
            for p in sim.spans[rank]:
                assert not _overlaps(f.start, f.end, p.start, p.end)
        for a, b in zip(spans, spans[1:], strict=False):
            assert a.end <= b.start + 1e-12


def test_bubble_used_is_fill_time_over_inner_bubble() -> None:
    """Quarter-unit tasks fill integer gaps exactly; 0.4-unit tasks leave 0.2 of each gap."""
    sim = simulate(generate("1f1b", 4, 8))
    inner = sum(b.length for rank in bubble_map(sim) for b in rank if b.kind.value == "inner")
    exact = place_fill(sim, [FillTask(0.25)] * 1000)
    assert sum(exact.bubble) == pytest.approx(inner)
    assert exact.bubble_used == pytest.approx(1.0)
    partial = place_fill(sim, [FillTask(0.4)] * 1000)
    assert partial.fill_time == pytest.approx(sum(
        0.4 * int(s.length / 0.4 + 1e-9) for rank in partial.slots for s in rank))
    assert partial.bubble_used < 1.0


def test_task_longer_than_every_gap_is_never_placed() -> None:
    """A task longer than each gap of a rank is listed in too_long, the queue goes on."""
    sim = simulate(generate("1f1b", 4, 8))
    plan = place_fill(sim, [FillTask(1.0), FillTask(100.0), FillTask(1.0)])
    assert all(1 in never for never in plan.too_long)
    assert [len(r) for r in plan.spans] == [2, 2, 2, 0]  # rank 3 has no inner gap


def test_memory_limits_what_a_gap_takes() -> None:
    """A task needing more than a gap's free memory waits for a gap with room."""
    sim = simulate(generate("1f1b", 2, 4))
    free = [s.free for s in place_fill(sim, []).slots[0]]
    need = max(free)
    plan = place_fill(sim, [FillTask(0.5, memory=need)])
    (span,) = plan.spans[0]
    slot = next(s for s in plan.slots[0] if s.start <= span.start < s.end)
    assert slot.free >= need
    assert place_fill(sim, [FillTask(0.5, memory=need + 1)]).too_long[0] == (0,)


def test_edges_adds_lead_and_tail_gaps() -> None:
    """With edges the warm-up wait of the last rank counts too."""
    sim = simulate(generate("1f1b", 4, 8))
    assert sum(place_fill(sim, [], edges=True).bubble) > sum(place_fill(sim, []).bubble)
    assert place_fill(sim, [], edges=True).slots[3][0].before == 0


def test_parse_fill() -> None:
    """DURATION[xCOUNT][@MEMORY] items; bad ones are SpecErrors with an example."""
    assert parse_fill("0.5x2@0.1,2") == [FillTask(0.5, 0.1)] * 2 + [FillTask(2.0)]
    for bad in ("", "ax2", "1x0", "-1"):
        with pytest.raises(SpecError):
            parse_fill(bad)
