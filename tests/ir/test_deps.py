"""Dependencies and the list execution (walk) shared by the validator and the simulator."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeblocks.errors import SpecError
from pipeblocks.ir import Action, Pass, PipelineSpec, Schedule, grid, needs, walk
from pipeblocks.ir.deps import Timing, key

F, B, W, BW = Pass.F, Pass.B, Pass.W, Pass.BW


def test_needs_by_hand() -> None:
    """docs/design.md, "Passes and dependencies" for a 4-stage pipeline, pass by pass."""
    assert needs(Action(0, F, 3), 4) == ()
    assert needs(Action(2, F, 3), 4) == (Action(1, F, 3),)
    assert needs(Action(3, B, 1), 4) == (Action(3, F, 1),)  # the loss is on the last stage
    assert needs(Action(3, BW, 1), 4) == (Action(3, F, 1),)
    assert needs(Action(1, BW, 1), 4) == (Action(1, F, 1), Action(2, B, 1))
    assert needs(Action(1, W, 0), 4) == (Action(1, B, 0),)
    assert key(Action(1, BW, 0)) == Action(1, B, 0) and key(Action(1, W, 0)) == Action(1, W, 0)


def _swapped(data: st.DataObject, s: Schedule) -> Schedule:
    progs = [list(p) for p in s.programs]
    for _ in range(data.draw(st.integers(0, 3), label="swaps")):
        r = data.draw(st.integers(0, len(progs) - 1))
        if len(progs[r]) > 1:
            i, k = (data.draw(st.integers(0, len(progs[r]) - 1)) for _ in range(2))
            progs[r][i], progs[r][k] = progs[r][k], progs[r][i]
    return Schedule(s.spec, tuple(map(tuple, progs)))


@given(data=st.data())
def test_visit_order_respects_every_dependency(  # type: ignore[no-untyped-def]
    data: st.DataObject, generator_names, sizes, schedule_of
) -> None:
    """visit sees each runnable action once, in program order per rank, after each dependency
    (reported with the rank that ran it); with or without visit the blocked ranks agree."""
    name = data.draw(st.sampled_from(generator_names))
    s = _swapped(data, schedule_of(name, *data.draw(st.sampled_from(sizes(name)))))
    ran: dict[Action, int] = {}
    order: list[tuple[int, int]] = []

    def visit(rank: int, pos: int, action: Action, deps: tuple[tuple[int, Action], ...]) -> None:
        assert s.programs[rank][pos] == action
        assert [d for _, d in deps] == list(needs(action, s.spec.num_stages))
        for dep_rank, dep in deps:
            assert ran[dep] == dep_rank
        ran[key(action)] = rank
        order.append((rank, pos))

    blocked = walk(s, visit)
    assert walk(s) == blocked  # the packed fast path and the general one agree
    stops = {b.rank: b.position for b in blocked}
    for rank, prog in enumerate(s.programs):
        done = [pos for r, pos in order if r == rank]
        assert done == list(range(stops.get(rank, len(prog))))
    for b in blocked:
        assert b.missing in needs(b.action, s.spec.num_stages) and b.missing not in ran


@given(data=st.data())
def test_timing_hook_starts_each_pass_as_early_as_its_rules_allow(  # type: ignore[no-untyped-def]
    data: st.DataObject, generator_names, sizes, schedule_of
) -> None:
    """With a timing, each pass starts at the later of its rank's previous end and each
    dependency's end (plus the edge's transfer), and lasts its kind's duration; the
    timed walk stops where the untimed one does, and names every unmet dependency."""
    name = data.draw(st.sampled_from(generator_names))
    s = _swapped(data, schedule_of(name, *data.draw(st.sampled_from(sizes(name)))))
    n = s.spec.num_stages
    times = st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0]), min_size=n, max_size=n)
    dur = [data.draw(times, label=k) for k in ("F", "B", "W", "BW")]
    act, grad = data.draw(times, label="act"), data.draw(times, label="grad")
    timing = Timing(dur, act, grad)
    blocked = walk(s, timing=timing)
    assert [(b.rank, b.position) for b in blocked] == [(b.rank, b.position) for b in walk(s)]
    code = {F: 0, B: 1, W: 2, BW: 3}
    end: dict[Action, float] = {}
    for r, prog in enumerate(s.programs):
        assert len(timing.starts[r]) == len(timing.ends[r])
        end.update((key(a), t1) for a, t1 in zip(prog, timing.ends[r], strict=False))
    for r, prog in enumerate(s.programs):
        for i, (t0, t1) in enumerate(zip(timing.starts[r], timing.ends[r], strict=True)):
            a = prog[i]
            earliest = timing.ends[r][i - 1] if i else 0.0
            for dep in needs(a, n):
                comm = 0.0  # the hook's transfers are per edge; the caller zeroes same-rank ones
                if dep.stage != a.stage:
                    comm = act[a.stage] if a.kind is F else grad[a.stage]
                earliest = max(earliest, end[dep] + comm)
            assert t0 == earliest and t1 == t0 + dur[code[a.kind]][a.stage]
    for b in blocked:
        assert b.unmet[0] == b.missing
        assert set(b.unmet) == {d for d in needs(b.action, n) if d not in end}


def test_timing_rejects_out_of_range_and_a_visit_beside_it() -> None:
    """The timed walk indexes flat arrays, so an index outside the spec is an error there."""
    s = Schedule(PipelineSpec(1, 1), ((Action(0, F, 0), Action(5, BW, 0)),))
    timing = Timing([[1.0]] * 4, [0.0], [0.0])
    with pytest.raises(SpecError, match="rank 0 position 1: 5BW0 is out of range"):
        walk(s, timing=timing)
    with pytest.raises(SpecError, match="not both"):
        walk(s, lambda *_: None, timing=timing)


def test_walk_out_of_range_and_huge_specs() -> None:
    """Indices outside the spec, or a spec far larger than its programs, take the general path
    and still report the blocked heads."""
    spec = PipelineSpec(1, 10**9)
    s = Schedule(spec, ((Action(0, F, 5), Action(0, BW, 7)),))
    (b,) = walk(s)
    assert (b.rank, b.position, b.missing) == (0, 1, Action(0, F, 7))
    s = Schedule(PipelineSpec(1, 1), ((Action(0, F, 0), Action(5, BW, 0)),))
    (b,) = walk(s)
    assert (b.position, b.missing) == (1, Action(5, F, 0))


def test_grid_window_and_mark() -> None:
    """A long program shows a window around the marked cell, with ellipses on cut sides."""
    spec = PipelineSpec(1, 40)
    s = Schedule(spec, (tuple(Action(0, F, j) for j in range(40)),))
    assert grid(s).startswith("rank 0 |  F0  F1")
    window = grid(s, mark=(0, 20), max_columns=6)
    assert window == "rank 0 |...  F17 F18 F19[F20]F21 F22 ..."
    assert grid(s, mark=(0, 39), max_columns=4) == "rank 0 |...  F36 F37 F38[F39]"
