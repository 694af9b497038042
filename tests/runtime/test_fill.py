"""The executor's fill hook on real gloo processes: tasks run in gaps, never break training."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipeblocks.errors import SpecError
from pipeblocks.generators import generate
from pipeblocks.runtime.fill import FillRunner, FillWork
from pipeblocks.runtime.launch import launch
from pipeblocks.sim import simulate
from pipeblocks.sim.fill import place_fill

WORKER = str(Path(__file__).with_name("fill_worker.py"))


def _run(mode: str, tmp_path: Path) -> list[dict]:
    out = tmp_path / f"{mode}.json"
    res = launch([sys.executable, WORKER, mode, str(out)], 2, capture=True, grace=5,
                 deadline=120)
    assert res.codes == (0, 0), (res.fault, res.stderr)
    return json.loads(out.read_text())


def test_fill_runs_in_gaps_and_a_raising_task_stops_only_the_queue(tmp_path: Path) -> None:
    """Rank 0 (1f1b, 20 ms passes) runs 5 ms tasks while it waits; 'boom' stops the queue."""
    r0, r1 = _run("emulated", tmp_path)
    assert r0["steps"] == r1["steps"] == 2  # training finished on both ranks
    assert r0["ran"] == [0, 1, 2] and r0["fill_tasks_done"] == 3  # ok0..2, then boom
    assert len(r0["fill_errors"]) == 1 and "fill task failed on purpose" in r0["fill_errors"][0]
    assert r0["fill_left"] == 0
    assert any("'huge'" in t and "never started" in t for t in r0["fill_never_started"])


def test_fill_leaves_losses_and_gradients_unchanged(tmp_path: Path) -> None:
    """The same step with a second model trained in the gaps gives the same losses and grads."""
    ranks = _run("grads", tmp_path)
    for r in ranks:
        assert r["fill"]["grads"] == r["plain"]["grads"]
        assert r["fill"]["losses"] == r["plain"]["losses"]
    assert sum(r["report"]["fill_tasks_done"] for r in ranks) > 0


def test_bad_fill_arguments_are_spec_errors() -> None:
    """Non-positive estimates and time units are refused with the fix."""
    with pytest.raises(SpecError, match="seconds > 0"):
        FillWork(lambda: None, 0.0)
    sim = simulate(generate("1f1b", 2, 4))
    with pytest.raises(SpecError, match="seconds_per_unit > 0"):
        FillRunner(sim.schedule, 0, place_fill(sim, []).slots[0], [], seconds_per_unit=0.0)
