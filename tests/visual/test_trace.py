"""Chrome / Perfetto traces: schema, one X event per pass, memory counters peaking at the peak."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate, names
from pipeblocks.ir import validate
from pipeblocks.sim import Simulation, UniformCosts, simulate
from pipeblocks.visual import chrome_trace, write_chrome_trace

NUMBER = (int, float)


def _sims_of_every_generator() -> list[Simulation]:
    sims = []
    for name in names():
        try:
            schedule = generate(name, 4, 8)
        except SpecError:
            continue
        sims.append(simulate(schedule, UniformCosts(f=1, b=1.5, w=0.75, comm=0.1)))
    return sims


def _check_schema(trace: dict) -> None:  # type: ignore[type-arg]
    """The Trace Event Format's object form, as Perfetto and chrome://tracing read it."""
    assert set(trace) >= {"traceEvents", "displayTimeUnit"}
    json.loads(json.dumps(trace))  # plain JSON values only
    for e in trace["traceEvents"]:
        assert e["ph"] in ("X", "C", "M")
        assert isinstance(e["name"], str) and e["name"]
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        assert isinstance(e.get("args", {}), dict)
        if e["ph"] == "X":
            assert isinstance(e["ts"], NUMBER) and e["ts"] >= 0
            assert isinstance(e["dur"], NUMBER) and e["dur"] >= 0
        elif e["ph"] == "C":
            assert isinstance(e["ts"], NUMBER) and e["ts"] >= 0
            assert all(isinstance(v, NUMBER) for v in e["args"].values()) and e["args"]
        else:
            assert e["name"] in ("process_name", "process_sort_index", "thread_name")


@pytest.mark.parametrize("sim", _sims_of_every_generator(), ids=lambda s: s.schedule.name)
def test_every_generator_traces_one_event_per_pass(sim: Simulation) -> None:
    """Schema holds; one X event per pass at its simulated time; counters peak at the peak."""
    trace = chrome_trace(sim)
    _check_schema(trace)
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == sim.schedule.num_actions
    got = sorted((e["pid"], e["name"], e["ts"], e["dur"]) for e in xs)
    want = sorted(
        (sp.rank, f"{sp.action.kind.value} s{sp.action.stage} mb{sp.action.mb}",
         sp.start * 1000, (sp.end - sp.start) * 1000)
        for row in sim.spans for sp in row
    )
    assert got == want
    for rank in range(sim.schedule.spec.num_ranks):
        held = [e["args"]["held"] for e in trace["traceEvents"]
                if e["ph"] == "C" and e["pid"] == rank]
        assert max(held) == sim.peak_memory[rank]


def test_args_and_process_names() -> None:
    """Args carry stage, microbatch and chunk (local index); processes are named 'rank r'."""
    sim = simulate(generate("interleaved-1f1b", 2, 4, 2))
    spec = sim.schedule.spec
    events = chrome_trace(sim)["traceEvents"]
    for e in events:
        if e["ph"] == "X":
            a = e["args"]
            assert e["name"] == f"{a['kind']} s{a['stage']} mb{a['microbatch']}"
            assert a["chunk"] == spec.local_of(a["stage"]) == a["stage"] // 2
            assert spec.rank_of(a["stage"]) == e["pid"]
    named = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert named == {0: "rank 0", 1: "rank 1"}
    assert {e["args"]["chunk"] for e in events if e["ph"] == "X"} == {0, 1}


@given(p=st.integers(1, 5), m=st.integers(1, 8), f=st.floats(0.1, 4), b=st.floats(0.1, 4),
       comm=st.floats(0, 1), scale=st.sampled_from([1.0, 1000.0, 1e6]))
def test_counter_maximum_is_the_peak_for_any_costs(p: int, m: int, f: float, b: float,
                                                    comm: float, scale: float) -> None:
    """For 1F1B under any costs and time scale, each rank's counter maximum is its peak."""
    schedule = generate("1f1b", p, m)
    validate(schedule)
    sim = simulate(schedule, UniformCosts(f=f, b=b, w=0.5, comm=comm))
    trace = chrome_trace(sim, us_per_unit=scale)
    for rank in range(p):
        held = [e["args"]["held"] for e in trace["traceEvents"]
                if e["ph"] == "C" and e["pid"] == rank]
        assert max(held) == sim.peak_memory[rank] == min(p - rank, m)
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == 2 * p * m
    assert max(e["ts"] + e["dur"] for e in xs) == pytest.approx(sim.makespan * scale)


def test_write_and_bad_scale(tmp_path: Path) -> None:
    """The file is the same JSON; a non-positive time scale is refused."""
    sim = simulate(generate("gpipe", 2, 2))
    path = write_chrome_trace(sim, tmp_path / "t.json")
    assert json.loads(path.read_text()) == chrome_trace(sim)
    with pytest.raises(SpecError, match="us_per_unit"):
        chrome_trace(sim, us_per_unit=0)
