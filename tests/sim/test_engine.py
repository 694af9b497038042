"""The event engine: hand-computed timelines, memory traces, a naive reference, properties."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeblocks.errors import DeadlockError, ScheduleError
from pipeblocks.generators import generate, names
from pipeblocks.ir import Action, PipelineSpec, Schedule
from pipeblocks.ir.deps import key, needs
from pipeblocks.sim import Simulation, UniformCosts, simulate


def A(text: str) -> Action:
    return Action.parse(text)


def times(sim: Simulation) -> list[list[tuple[str, float, float]]]:
    return [[(str(sp.action), sp.start, sp.end) for sp in rank] for rank in sim.spans]


def test_1f1b_two_ranks_with_transfer_cost_by_hand() -> None:
    """1F1B p=2 m=2, F=1, BW=2, one transfer = 0.5: every start and end as computed by hand."""
    sim = simulate(generate("1f1b", 2, 2), UniformCosts(f=1, b=2, w=0, comm=0.5))
    assert times(sim) == [
        [("0F0", 0, 1), ("0F1", 1, 2), ("0BW0", 5, 7), ("0BW1", 8, 10)],
        [("1F0", 1.5, 2.5), ("1BW0", 2.5, 4.5), ("1F1", 4.5, 5.5), ("1BW1", 5.5, 7.5)],
    ]
    assert sim.makespan == 10
    assert sim.busy == (6, 6) and sim.span == (10, 6)
    assert sim.bubble_rate == pytest.approx(0.4) and sim.bubble_rate_global == pytest.approx(0.4)
    assert sim.memory[0] == ((0, 0), (0, 1), (1, 2), (7, 1), (10, 0))
    assert sim.memory[1] == ((0, 0), (1.5, 1), (4.5, 0), (4.5, 1), (7.5, 0))
    assert sim.peak_memory == (2, 1) and sim.peak_fraction == 1.0


def test_v_turn_is_free_by_hand() -> None:
    """Under the V placement the hand-over on rank p-1 costs no transfer; the others do."""
    spec = PipelineSpec(2, 1, 2, "v")  # rank 0 holds stages 0 and 3, rank 1 stages 1 and 2
    sched = Schedule(spec, (
        (A("0F0"), A("3F0"), A("3BW0"), A("0BW0")),
        (A("1F0"), A("2F0"), A("2BW0"), A("1BW0")),
    ))
    # per stage (v=2): F = 1, BW = 2; one transfer = 1
    sim = simulate(sched, UniformCosts(f=2, b=2, w=2, comm=1))
    assert times(sim) == [
        [("0F0", 0, 1), ("3F0", 5, 6), ("3BW0", 6, 8), ("0BW0", 14, 16)],
        [("1F0", 2, 3), ("2F0", 3, 4), ("2BW0", 9, 11), ("1BW0", 11, 13)],
    ]


def test_split_backward_memory_by_hand() -> None:
    """B frees mem_f - mem_w at its end and W frees mem_w at its end; F allocates at its start."""
    spec = PipelineSpec(1, 2)
    sched = Schedule(spec, ((A("0F0"), A("0F1"), A("0B0"), A("0B1"), A("0W0"), A("0W1")),))
    sim = simulate(sched, UniformCosts(f=1, b=1, w=1, mem_f=4, mem_w=1))
    assert sim.memory[0] == ((0, 0), (0, 4), (1, 8), (3, 5), (4, 2), (5, 1), (6, 0))
    assert sim.peak_memory == (8,)


def test_deadlocked_programs_name_every_stuck_rank() -> None:
    """Unvalidated, two ranks each waiting for the other's later pass raise DeadlockError
    naming both; validated (the default), the validator's dependency rule names the root."""
    spec = PipelineSpec(2, 1)
    sched = Schedule(spec, ((A("0BW0"), A("0F0")), (A("1F0"), A("1BW0"))))
    with pytest.raises(DeadlockError) as err:
        simulate(sched, validate=False)
    assert set(err.value.blocked) == {0, 1}
    assert "0BW0" in err.value.blocked[0] and "1F0" in err.value.blocked[1]
    with pytest.raises(ScheduleError, match=r"\(dependency\): rank 0, position 0: 0BW0"):
        simulate(sched)


def test_simulate_validates_by_default() -> None:
    """A schedule missing one W gets no makespan: simulate raises the validator's error."""
    full = generate("zb-h1", 2, 2)
    dropped = A("0W1")
    programs = [tuple(a for a in prog if a != dropped) for prog in full.programs]
    broken = Schedule(full.spec, programs)
    assert simulate(broken, validate=False).makespan > 0  # what the engine alone would say
    with pytest.raises(ScheduleError, match=r"\(split-or-fused\).*0B1 has no matching 0W1"):
        simulate(broken)


def test_simulate_skipping_validation_gives_the_same_result() -> None:
    """validate=False changes nothing for a valid schedule but the time spent."""
    s = generate("v-half", 4, 8)
    costs = UniformCosts(f=1, b=2, w=1, comm=0.25)
    assert simulate(s, costs, validate=False) == simulate(s, costs)


def test_simulation_is_frozen() -> None:
    """A Simulation cannot be changed after the fact."""
    sim = simulate(generate("gpipe", 2, 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        sim.makespan = 0.0  # type: ignore[misc]


def reference_times(schedule: Schedule, costs: UniformCosts) -> dict[Action, tuple[float, float]]:
    """A naive fixed-point timer: sweep all programs until every pass has a start (O(N^2))."""
    spec = schedule.spec
    end: dict[Action, float] = {}
    out: dict[Action, tuple[float, float]] = {}
    pos = [0] * spec.num_ranks
    free = [0.0] * spec.num_ranks
    progress = True
    while progress:
        progress = False
        for r, prog in enumerate(schedule.programs):
            while pos[r] < len(prog):
                a = prog[pos[r]]
                deps = needs(a, spec.num_stages)
                if any(d not in end for d in deps):
                    break
                start = free[r]
                for d in deps:
                    t = end[d]
                    if spec.rank_of(d.stage) != r:
                        t += costs.comm_time(spec, spec.rank_of(d.stage), r, d.stage)
                    start = max(start, t)
                finish = start + costs.pass_time(spec, a.stage, a.kind)
                out[a] = (start, finish)
                end[key(a)] = finish
                free[r] = finish
                pos[r] += 1
                progress = True
    return out


schedules = st.tuples(
    st.sampled_from(sorted(names())),
    st.integers(2, 6),
    st.integers(1, 14),
)
costs = st.builds(
    UniformCosts,
    f=st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0]),
    b=st.sampled_from([0.5, 1.0, 2.0, 2.5]),
    w=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    comm=st.sampled_from([0.0, 0.25, 1.0]),
)


def _generate(name: str, p: int, m: int) -> Schedule:
    from pipeblocks.errors import SpecError

    try:
        return generate(name, p, m)
    except SpecError:
        return generate("1f1b", p, m)  # (p, m) outside this generator's domain


@settings(max_examples=60, deadline=None)
@given(schedules, costs)
def test_engine_matches_naive_reference(case: tuple[str, int, int], c: UniformCosts) -> None:
    """Every start and end equals the naive fixed-point timer's, for every registered family."""
    sched = _generate(*case)
    sim = simulate(sched, c)
    ref = reference_times(sched, c)
    got = {sp.action: (sp.start, sp.end) for rank in sim.spans for sp in rank}
    assert got == ref


@settings(max_examples=60, deadline=None)
@given(schedules, costs)
def test_makespan_bounds_busy_and_spans(case: tuple[str, int, int], c: UniformCosts) -> None:
    """makespan >= busy and >= span on every rank; passes on a rank never overlap; rates in [0,1)."""
    sched = _generate(*case)
    sim = simulate(sched, c)
    for r, rank_spans in enumerate(sim.spans):
        assert sim.makespan >= sim.busy[r] - 1e-9
        assert sim.makespan >= sim.span[r] - 1e-9
        assert sim.span[r] >= sim.busy[r] - 1e-9
        for a, b in zip(rank_spans, rank_spans[1:], strict=False):
            assert b.start >= a.end
        assert sim.memory[r][-1][1] == pytest.approx(0.0, abs=1e-9)  # everything freed
    assert 0 <= sim.bubble_rate <= sim.bubble_rate_global + 1e-12 < 1


def test_idle_and_inner_idle() -> None:
    """idle = makespan - busy and idle_inner = span - busy, per rank."""
    sim = simulate(generate("1f1b", 3, 4))
    assert sim.idle == tuple(sim.makespan - b for b in sim.busy)
    assert sim.idle_inner == tuple(s - b for s, b in zip(sim.span, sim.busy, strict=True))
    assert sim.idle_inner == (6, 3, 0)  # rank r waits (p-1-r)(F+BW) in its span


def test_span_of_and_timeline() -> None:
    """span_of finds one pass; the timeline lists every pass once, by start time."""
    sim = simulate(generate("1f1b", 2, 2), UniformCosts(f=1, b=2, w=0, comm=0.5))
    assert sim.span_of(A("1BW0")).start == 2.5
    line = sim.timeline()
    assert len(line) == 8 and [sp.start for sp in line] == sorted(sp.start for sp in line)
