"""The timed ASCII timeline: hand-computed pictures, width, letters, idle cells."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate
from pipeblocks.ir import Action, PipelineSpec, Schedule, validate
from pipeblocks.sim import UniformCosts, simulate
from pipeblocks.visual.ascii_timed import timed_ascii


def _rows(text: str) -> list[str]:
    return [line.split("|", 1)[1] for line in text.splitlines() if line.startswith("rank ")]


def test_gpipe_one_microbatch_by_hand() -> None:
    """p=2, m=1: F 1 unit, BW 2 units, 12 cells of 0.5: times worked out by hand."""
    # rank 0: F [0,1], idle [1,4], BW [4,6]; rank 1: idle [0,1], F [1,2], BW [2,4], idle [4,6]
    sim = simulate(generate("gpipe", 2, 1))
    assert _rows(timed_ascii(sim, width=8 + 12, header=False)) == [
        "F0......X0XX",
        "..F0X0XX....",
    ]


def test_v_chunks_in_lower_case_by_hand() -> None:
    """One rank with a V's two stages: chunk 1's passes are lower case; B and W kept apart."""
    spec = PipelineSpec(1, 1, 2, "v")
    prog = tuple(Action.parse(t) for t in "0F0 1F0 1B0 0B0 1W0 0W0".split())
    schedule = Schedule(spec, (prog,), name="v1")
    validate(schedule)
    sim = simulate(schedule)  # each pass takes 1/2 unit on a rank with two stages
    assert _rows(timed_ascii(sim, width=8 + 12, header=False)) == ["F0f0b0B0w0W0"]
    # 8 cells of 3/8 unit: the passes' ends round to cells 1, 3, 4, 5, 7, 8.
    assert _rows(timed_ascii(sim, width=8 + 8, header=False)) == ["FffbBwwW"]


def test_labels_only_when_every_pass_has_room() -> None:
    """Too narrow for every number: letters only, so no pass hides its neighbour's label."""
    # 8 cells of 3/4 unit: rank 0's F ends at cell 1.33 -> 1 (one cell, no room for "F0").
    sim = simulate(generate("gpipe", 2, 1))
    assert _rows(timed_ascii(sim, width=8 + 8, header=False)) == ["F....XXX", ".FFXX..."]


@given(name=st.sampled_from(["gpipe", "1f1b", "zb-h1", "interleaved-1f1b"]),
       p=st.integers(1, 6), k=st.integers(1, 3), width=st.integers(20, 200),
       f=st.floats(0.2, 3), b=st.floats(0.2, 3), w=st.floats(0.2, 3))
def test_width_is_respected(name: str, p: int, k: int, width: int, f: float, b: float,
                            w: float) -> None:
    """Every line fits the width, rank rows fill it exactly, cells are letters or '.'."""
    m = p * k  # interleaved-1f1b needs m % p == 0
    sim = simulate(generate(name, p, m), UniformCosts(f=f, b=b, w=w))
    text = timed_ascii(sim, width=width)
    assert all(len(line) <= width for line in text.splitlines())
    rows = [line for line in text.splitlines() if line.startswith("rank ")]
    assert len(rows) == p and all(len(r) == width for r in rows)
    cells = set("".join(_rows(text)))
    assert cells <= set("FBWXfbwx.0123456789")


@given(p=st.integers(2, 5), m=st.integers(1, 6))
def test_idle_cells_track_idle_time(p: int, m: int) -> None:
    """At two cells per time unit the '.' count of each rank is twice its idle time exactly."""
    sim = simulate(generate("1f1b", p, m), UniformCosts(f=1, b=1, w=1))
    makespan = int(sim.makespan)
    prefix = len(f"rank {p - 1} |")
    rows = _rows(timed_ascii(sim, width=prefix + 2 * makespan, header=False))
    assert [r.count(".") for r in rows] == [pytest.approx(2 * i) for i in sim.idle]


def test_too_narrow_is_a_spec_error() -> None:
    """A width that leaves fewer than 8 cells is refused, naming the minimum."""
    sim = simulate(generate("1f1b", 4, 8))
    with pytest.raises(SpecError, match="--width 16 or more"):
        timed_ascii(sim, width=15)
