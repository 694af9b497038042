"""Costs without ambiguity: --cost (per rank) and --stage-cost (per stage) are both accepted and
named in every output header; a costs file states its time unit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clikit import last_json, run


def test_stage_cost_is_per_stage_and_cost_per_rank(capsys: pytest.CaptureFixture[str]) -> None:
    """--stage-cost f=1.5,... on a two-stage-per-rank schedule is --cost f=3,...: same times;
    each output names which one it got."""
    code, out, _ = run(capsys, "simulate", "v-half", "-p", "4", "-m", "8", "--cost",
                       "f=3,b=4,w=2,comm=0.5", "--json")
    per_rank = last_json(out)
    code2, out2, _ = run(capsys, "simulate", "v-half", "-p", "4", "-m", "8", "--stage-cost",
                         "f=1.5,b=2,w=1,comm=0.5", "--json")
    per_stage = last_json(out2)
    assert code == code2 == 0 and per_rank["makespan"] == per_stage["makespan"]
    assert per_rank["costs"] == "--cost (per rank) f=3,b=4,w=2,comm=0.5"
    assert per_stage["costs"] == "--stage-cost (per stage, v=2) f=1.5,b=2,w=1,comm=0.5"


@pytest.mark.parametrize("argv", [
    ["simulate", "v-half", "-p", "4", "-m", "8"],
    ["compare", "-p", "4", "-m", "8"],
    ["search", "-p", "4", "-m", "8", "--memory", "1"],
    ["pareto", "-p", "4", "-m", "8", "--family", "v", "--top", "0.75"],
])
def test_every_header_names_the_costs(capsys: pytest.CaptureFixture[str],
                                      argv: list[str]) -> None:
    """The text header and the JSON of simulate, compare, search and pareto say per rank or per
    stage."""
    code, out, _ = run(capsys, *argv, "--stage-cost", "f=1,b=1,w=1")
    assert code == 0
    head = "\n".join(line for line in out.splitlines() if line.startswith("#"))
    assert "--stage-cost (per stage, v=2) f=1,b=1,w=1,comm=0" in head
    code, out, _ = run(capsys, *argv, "--cost", "f=2,b=2,w=2", "--json")
    assert code == 0 and last_json(out)["costs"] == "--cost (per rank) f=2,b=2,w=2,comm=0"


def test_stage_cost_refuses_another_cut(capsys: pytest.CaptureFixture[str]) -> None:
    """Per-stage times of a two-stage-per-rank cut do not time a one-stage schedule: the error
    says so and names both fixes; v=1 states the other cut."""
    code, _, err = run(capsys, "simulate", "1f1b", "-p", "4", "-m", "8", "--stage-cost", "f=1")
    assert code == 2 and "add v=1 to --stage-cost" in err and "--cost" in err
    code, out, _ = run(capsys, "simulate", "1f1b", "-p", "4", "-m", "8", "--stage-cost",
                       "f=1,b=2,w=1,v=1", "--json")
    assert code == 0 and last_json(out)["costs"].startswith("--stage-cost (per stage, v=1)")


def test_cost_and_stage_cost_together_is_a_usage_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    """One source of uniform times: both flags at once are refused by the parser."""
    code, _, err = run(capsys, "simulate", "1f1b", "-p", "2", "-m", "2", "--cost", "f=1",
                       "--stage-cost", "f=1")
    assert code == 2 and "not allowed with argument" in err


def test_costs_file_states_its_time_unit(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """A per-stage file without time_unit is refused naming the field; with it, the header
    names the file's unit and that its times are per stage."""
    stages = [{"f": 1, "b": 2, "w": 1}] * 4
    path = tmp_path / "costs.json"
    path.write_text(json.dumps({"stages": stages}))
    code, _, err = run(capsys, "simulate", "1f1b", "-p", "4", "-m", "8", "--costs", str(path))
    assert code == 1 and "field 'time_unit' is missing" in err
    path.write_text(json.dumps({"stages": stages, "time_unit": "ms"}))
    code, out, _ = run(capsys, "simulate", "1f1b", "-p", "4", "-m", "8", "--costs", str(path))
    assert code == 0
    assert "costs file (per stage, 4 stages, times in ms)" in out.splitlines()[0]


def test_exact_text_output_and_objective(capsys: pytest.CaptureFixture[str]) -> None:
    """--exact prints the bound and whether it is proven; it minimizes the makespan only."""
    pytest.importorskip("ortools", reason="the exact solver needs OR-Tools")
    code, out, _ = run(capsys, "search", "--exact", "-p", "2", "-m", "4", "--memory", "1",
                       "--time-limit", "20")
    assert code == 0 and "lower bound     12.5  (proven optimal)" in out
    assert "# costs: --cost (per rank) f=1,b=1,w=1,comm=0" in out
    code, _, err = run(capsys, "search", "--exact", "-p", "2", "-m", "4", "--memory", "1",
                       "--objective", "bubble")
    assert code == 2 and "--exact minimizes the makespan" in err
