"""`pipeblocks simulate --fill`: the fill report, its JSON keys and the picture."""

from __future__ import annotations

from pathlib import Path

import pytest
from clikit import last_json, run

from pipeblocks.generators import generate
from pipeblocks.sim import simulate
from pipeblocks.sim.fill import FillTask, place_fill


def test_simulate_fill_json_matches_the_library(capsys: pytest.CaptureFixture[str]) -> None:
    """--fill --json reports the placement's task count, bubble used and misfits."""
    code, out, _ = run(capsys, "simulate", "1f1b", "-p", "4", "-m", "8", "--fill",
                       "1.5x10,4", "--json")
    assert code == 0
    obj = last_json(out)
    plan = place_fill(simulate(generate("1f1b", 4, 8)), [FillTask(1.5)] * 10 + [FillTask(4.0)])
    assert obj["fill_tasks_done"] == plan.tasks_done == 7
    assert obj["fill_bubble_used"] == pytest.approx(plan.bubble_used)
    assert obj["fill_never_started"][2] == [10]


def test_simulate_fill_text_and_picture(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The text names the bubble used and the tasks never started; the picture is written."""
    pytest.importorskip("matplotlib")
    pic = tmp_path / "fill.png"
    code, out, _ = run(capsys, "simulate", "v-min", "-p", "4", "-m", "8", "--fill", "0.25x200,9",
                       "--fill-picture", str(pic))
    assert code == 0
    assert "(100.0% of the bubble used)" in out
    assert "never started" in out
    assert pic.stat().st_size > 0


def test_fill_picture_without_fill_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """--fill-picture alone is a one-line error naming --fill."""
    code, _, err = run(capsys, "simulate", "1f1b", "-p", "2", "-m", "2", "--fill-picture", "x.png")
    assert code != 0 and "--fill" in err
