"""--recompute in simulate, draw, search and pareto: the knob reaches below V-Min."""

from __future__ import annotations

from pathlib import Path

import pytest
from clikit import last_json, run

from pipeblocks.generators import generate
from pipeblocks.ir.recompute import with_recompute
from pipeblocks.search.engine import Searcher
from pipeblocks.sim import UniformCosts, simulate


def test_simulate_recompute_matches_the_library(capsys: pytest.CaptureFixture[str]) -> None:
    """simulate --recompute all reports the recomputed schedule's simulation."""
    code, out, _ = run(capsys, "simulate", "zb-h1", "-p", "4", "-m", "8", "--cost",
                       "f=1,b=1,w=1", "--recompute", "all", "--json")
    assert code == 0
    obj = last_json(out)
    sim = simulate(with_recompute(generate("zb-h1", 4, 8)), UniformCosts())
    assert obj["makespan"] == sim.makespan and obj["recompute"] == [0, 1, 2, 3]
    assert obj["peak_memory"] == list(sim.peak_memory)


def test_simulate_bad_recompute_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A stage out of range is exit 2 with the rule named."""
    code, _, err = run(capsys, "simulate", "1f1b", "-p", "2", "-m", "2", "--recompute", "5")
    assert code == 2 and "stages 0..1" in err


def test_draw_recompute_writes_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """draw --recompute draws the hatched recompute (a PNG is written)."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "r.png"
    code, _, _ = run(capsys, "draw", "1f1b-r", "-p", "3", "-m", "4", "-o", str(out))
    assert code == 0 and out.read_bytes().startswith(b"\x89PNG")


def test_search_below_smallest_needs_recompute(capsys: pytest.CaptureFixture[str]) -> None:
    """A budget below every schedule's peak fails without --recompute and is met with it."""
    smallest = Searcher(4, 8).smallest()
    budget = str(round(smallest * 0.6, 4))
    assert float(budget) >= 1 / 8  # one stage-activation of the V placement: reachable
    code, _, err = run(capsys, "search", "-p", "4", "-m", "8", "--memory", budget)
    assert code == 2 and "below the smallest" in err
    code, out, _ = run(capsys, "search", "-p", "4", "-m", "8", "--memory", budget,
                       "--recompute", "--json")
    assert code == 0
    obj = last_json(out)
    assert obj["peak_fraction"] <= float(budget) and "recompute" in obj["how"]


def test_pareto_recompute_adds_points_below_v_min(capsys: pytest.CaptureFixture[str]) -> None:
    """pareto --recompute lists budgets below the smallest schedule-only one, each with its
    simulated bubble, and is never slower than the plain front at a shared budget."""
    code, out, _ = run(capsys, "pareto", "-p", "4", "-m", "8", "--json")
    plain = last_json(out)
    code, out, _ = run(capsys, "pareto", "-p", "4", "-m", "8", "--recompute", "--json")
    assert code == 0
    front = last_json(out)
    low = min(pt["budget"] for pt in plain["points"])
    below = [pt for pt in front["points"] if pt["budget"] < low]
    assert below and all(pt["peak_fraction"] <= pt["budget"] + 1e-9 for pt in below)
    assert all("+r(" in pt["name"] for pt in below)
    plain_at = {round(pt["budget"], 9): pt["makespan"] for pt in plain["points"]}
    for pt in front["points"]:
        if round(pt["budget"], 9) in plain_at:
            assert pt["makespan"] <= plain_at[round(pt["budget"], 9)]


def test_list_names_the_recomputed_variants(capsys: pytest.CaptureFixture[str]) -> None:
    """`pipeblocks list` says how to reach NAME-r; the variant it names simulates."""
    code, out, _ = run(capsys, "list")
    assert code == 0 and "NAME-r (e.g. 1f1b-r)" in out
    code, out, _ = run(capsys, "simulate", "1f1b-r", "-p", "2", "-m", "4", "--json")
    assert code == 0 and last_json(out)["recompute"] == [0, 1]
